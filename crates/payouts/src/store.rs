//! Payout batches in PostgreSQL, and the ledger entries and outbox rows that go with each change.
//!
//! Every state change of a batch commits in one transaction with its ledger entry and its outbox
//! rows: created (creators → `payouts_in_flight`), sent (the first signed transaction stored),
//! confirmed (`payouts_in_flight` → the chain's asset account, gas → `expenses:network_fees`) or
//! failed (`payouts_in_flight` → back to each creator). Confirming and failing only move a batch that
//! is still open, and their entries carry idempotency keys, so doing either twice changes nothing.

use alloy_primitives::{Address, B256};
use chrono::{DateTime, Utc};
use serde::Serialize;
use payrail_store::page::{Order, Page};
use sqlx::{PgConnection, PgPool, Row};

use crate::ids::new_id;
use crate::ledger::{AccountCode, Ledger, NewEntry};
use crate::money::{Amount, ChainId};
use crate::webhook::emit;

use super::error::{PayoutError, Result};
use super::plan::{Candidate, PlannedBatch};


/// A batch, as the API and webhooks show it; read from `payout_batches` by column name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct PayoutView {
    /// `po_…`
    pub id: String,
    pub run_id: String,
    /// CAIP-2.
    pub chain: String,
    /// CAIP-19.
    pub asset: String,
    /// `created` → `sent` → `confirmed`, or `failed` (balances returned to the creators).
    pub status: String,
    /// Sum of the items, in the asset's smallest unit: of the whole batch for finance keys, of
    /// the merchant's own items in a merchant's webhook.
    pub total_minor: String,
    /// Items counted as `total_minor` is.
    pub recipients: i32,
    /// The bytes32 id the contract refuses to pay twice.
    pub batch_key: String,
    /// The mined transaction, once there is one.
    pub tx_hash: Option<String>,
    pub block_number: Option<i64>,
    /// Gas the transaction burnt, in the chain's native smallest unit.
    pub gas_fee_minor: Option<String>,
    /// Why the batch waits or failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The creators paid; in a merchant's webhook, only that merchant's creators.
    #[sqlx(skip)]
    pub items: Vec<PayoutItemView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct PayoutItemView {
    /// `creator` (a creator's earnings), `merchant` (the merchant's own balance: a settlement) or
    /// `refund` (a crypto refund to a payer).
    pub recipient: String,
    /// The creator paid; null for a settlement.
    pub creator_id: Option<String>,
    pub merchant_id: String,
    pub address: String,
    pub amount_minor: String,
}

/// One payout as the creator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CreatorPayoutView {
    pub payout_id: String,
    pub chain: String,
    pub asset: String,
    pub address: String,
    pub amount_minor: String,
    pub status: String,
    pub tx_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An open batch, as the executor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub id: String,
    pub chain: String,
    pub asset: String,
    pub token: Address,
    pub batcher: Address,
    pub batch_key: B256,
    pub status: String,
    pub total: Amount,
    pub items: Vec<ItemRow>,
    /// The tip when its nonce was first seen taken by another transaction.
    pub nonce_lost_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    /// The ledger account the amount left, and returns to if the batch fails.
    pub account: AccountCode,
    pub merchant_id: String,
    pub address: Address,
    pub amount: Amount,
}

/// A signed transaction of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub tx_hash: B256,
    pub sender: Address,
    pub nonce: u64,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    pub raw_tx: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// Where the paying transaction was mined and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mined {
    pub tx_hash: B256,
    pub block_number: u64,
    pub block_hash: B256,
    pub gas_fee: Amount,
}

fn corrupt(value: impl Into<String>) -> PayoutError {
    PayoutError::Corrupt { value: value.into() }
}

fn amount(text: &str) -> Result<Amount> {
    Amount::parse_decimal(text, 0).map_err(|_| corrupt(text))
}

fn address(text: &str) -> Result<Address> {
    text.parse().map_err(|_| corrupt(text))
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The bytes32 a batch is paid under: derived from the batch id, so it is fixed when the batch is.
pub fn batch_key(batch_id: &str) -> B256 {
    alloy_primitives::keccak256(format!("payrail.payout:{batch_id}").as_bytes())
}

/// Creators of every merchant with a positive balance in `asset` and a payout address on `chain`
/// that the creator did not change after `changed_before` (the takeover delay) or whose change its
/// merchant confirmed.
pub async fn candidates(conn: &mut PgConnection, chain: &ChainId, asset: &str, changed_before: DateTime<Utc>) -> Result<Vec<Candidate>> {
    let rows = sqlx::query(
        "SELECT c.id, c.merchant_id, a.address, sum(b.balance)::text AS balance \
         FROM creators c \
         JOIN creator_payout_addresses a ON a.creator_id = c.id AND a.chain = $1 \
                                            AND (a.changed_at IS NULL OR a.changed_at <= $3 OR a.confirmed_at IS NOT NULL) \
         JOIN accounts acc ON acc.code = 'liabilities:creator:' || c.id \
         JOIN balances b ON b.account_id = acc.id AND b.asset = $2 \
         GROUP BY c.id, c.merchant_id, a.address HAVING sum(b.balance) > 0 ORDER BY c.id",
    )
    .bind(chain.to_string())
    .bind(asset)
    .bind(changed_before)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Candidate {
                refund_id: None,
                creator_id: Some(row.try_get("id")?),
                merchant_id: row.try_get("merchant_id")?,
                address: address(&row.try_get::<String, _>("address")?)?,
                amount: amount(&row.try_get::<String, _>("balance")?)?,
            })
        })
        .collect()
}

/// What open batches of `asset` on `chain` will still take from the batcher's balance.
pub async fn promised(conn: &mut PgConnection, chain: &ChainId, asset: &str) -> Result<Amount> {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT sum(total_minor)::text FROM payout_batches WHERE chain = $1 AND asset = $2 AND status IN ('created', 'sent')",
    )
    .bind(chain.to_string())
    .bind(asset)
    .fetch_one(conn)
    .await?;
    text.map_or(Ok(Amount::ZERO), |t| amount(&t))
}

/// Serializes payout runs across replicas for the rest of the caller's transaction.
pub async fn lock_runs(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('payrail.payouts.run'))").execute(conn).await?;
    Ok(())
}

/// Writes a planned batch, its items, the entry moving the creators' balances to
/// `payouts_in_flight`, and `payout.created` for each merchant involved, on the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub async fn create_batch(
    conn: &mut PgConnection,
    ledger: &Ledger,
    run_id: &str,
    chain: &ChainId,
    asset: &str,
    token: Address,
    batcher: Address,
    planned: &PlannedBatch,
    now: DateTime<Utc>,
) -> Result<PayoutView> {
    let id = new_id("po");
    let key = batch_key(&id);
    sqlx::query(
        "INSERT INTO payout_batches (id, run_id, chain, asset, token, batcher, batch_key, status, total_minor, recipients, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'created', $8::numeric, $9, $10, $10)",
    )
    .bind(&id)
    .bind(run_id)
    .bind(chain.to_string())
    .bind(asset)
    .bind(format!("{token:#x}"))
    .bind(format!("{batcher:#x}"))
    .bind(format!("{key:#x}"))
    .bind(planned.total.to_string())
    .bind(i32::try_from(planned.items.len()).unwrap_or(i32::MAX))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut entry = NewEntry::new(format!("payout:{id}"), "payout").memo(format!("payout {id}"));
    for (position, item) in planned.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO payout_items (batch_id, position, creator_id, merchant_id, address, amount_minor, account) \
             VALUES ($1, $2, $3, $4, $5, $6::numeric, $7)",
        )
        .bind(&id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(&item.creator_id)
        .bind(&item.merchant_id)
        .bind(item.address.to_checksum(None))
        .bind(item.amount.to_string())
        .bind(item.account().as_str())
        .execute(&mut *conn)
        .await?;
        entry = entry.debit(item.account(), asset, item.amount);
    }
    entry = entry.credit(AccountCode::payouts_in_flight(), asset, planned.total);
    // A balance that shrank since it was read (it cannot: runs are serialized and only payouts
    // debit a creator) would be refused here by the ledger's guard, and nothing would commit.
    ledger.post(&mut *conn, &entry).await?;
    let view = view_on(&mut *conn, &id).await?.ok_or_else(|| PayoutError::NotFound { id: id.clone() })?;
    announce(&mut *conn, &view, "payout.created", now).await?;
    Ok(view)
}

/// One event per merchant whose creators the batch pays, showing only that merchant's items.
async fn announce(conn: &mut PgConnection, view: &PayoutView, event_type: &str, now: DateTime<Utc>) -> Result<()> {
    let mut merchants: Vec<&str> = view.items.iter().map(|i| i.merchant_id.as_str()).collect();
    merchants.sort_unstable();
    merchants.dedup();
    for merchant in merchants {
        let data = merchant_share(view, merchant)?;
        emit(&mut *conn, merchant, event_type, &view.id, &data, now).await?;
    }
    Ok(())
}

/// A batch as one of its merchants may see it: only that merchant's items, and the total and
/// recipient count of those items — never what the batch pays other merchants' creators.
pub(crate) fn merchant_share(view: &PayoutView, merchant: &str) -> Result<PayoutView> {
    let mut data = view.clone();
    data.items.retain(|i| i.merchant_id == merchant);
    let amounts = data.items.iter().map(|i| amount(&i.amount_minor)).collect::<Result<Vec<_>>>()?;
    let total = Amount::checked_sum(amounts).ok_or_else(|| PayoutError::Corrupt { value: format!("total of {}", view.id) })?;
    data.total_minor = total.to_string();
    data.recipients = i32::try_from(data.items.len()).map_err(|_| PayoutError::Corrupt { value: format!("items of {}", view.id) })?;
    Ok(data)
}

const VIEW_COLUMNS: &str = "id, run_id, chain, asset, status, total_minor::text AS total_minor, recipients, batch_key, \
     tx_hash, block_number, gas_fee_minor::text AS gas_fee_minor, error, created_at, sent_at, finished_at";

async fn item_views(conn: &mut PgConnection, id: &str) -> Result<Vec<PayoutItemView>> {
    Ok(sqlx::query_as(
        "SELECT CASE WHEN creator_id IS NOT NULL THEN 'creator' WHEN account LIKE 'liabilities:refund:%' THEN 'refund' \
                ELSE 'merchant' END AS recipient, creator_id, merchant_id, \
                address, amount_minor::text AS amount_minor FROM payout_items \
         WHERE batch_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(conn)
    .await?)
}

async fn view_on(conn: &mut PgConnection, id: &str) -> Result<Option<PayoutView>> {
    let view: Option<PayoutView> = sqlx::query_as(&format!("SELECT {VIEW_COLUMNS} FROM payout_batches WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match view {
        Some(mut view) => {
            view.items = item_views(&mut *conn, id).await?;
            Ok(Some(view))
        }
        None => Ok(None),
    }
}

pub async fn view(pool: &PgPool, id: &str) -> Result<PayoutView> {
    let mut conn = pool.acquire().await?;
    view_on(&mut conn, id).await?.ok_or_else(|| PayoutError::NotFound { id: id.to_owned() })
}

/// The list order of batches: newest first.
pub(crate) const NEWEST: Order = Order("b.created_at DESC, b.id DESC");
/// A batch's place in it, for a `po_…` cursor bound at `$2`.
pub(crate) const BATCH_KEY: &str = "SELECT created_at, id FROM payout_batches WHERE id = $2";

/// A page of batches, newest first, optionally of one status, and whether more follow.
pub async fn list(pool: &PgPool, page: &Page, status: Option<&str>) -> Result<(Vec<PayoutView>, bool)> {
    let mut conn = pool.acquire().await?;
    let views: Vec<PayoutView> = sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM payout_batches b WHERE ($3::text IS NULL OR b.status = $3) AND {} ORDER BY {} LIMIT $1",
        page.condition(NEWEST, BATCH_KEY),
        page.order_by(NEWEST),
    ))
    .bind(page.fetch())
    .bind(page.cursor_id())
    .bind(status)
    .fetch_all(&mut *conn)
    .await?;
    let (mut views, has_more) = page.finish(views);
    for view in &mut views {
        view.items = item_views(&mut conn, &view.id).await?;
    }
    Ok((views, has_more))
}

/// A page of a creator's payouts (one item each, a batch pays a creator once), newest first, and
/// whether more follow.
pub async fn creator_payouts(pool: &PgPool, creator_id: &str, page: &Page) -> Result<(Vec<CreatorPayoutView>, bool)> {
    let rows = sqlx::query_as(&format!(
        "SELECT b.id AS payout_id, b.chain, b.asset, i.address, i.amount_minor::text AS amount_minor, b.status, b.tx_hash, \
                b.created_at, b.finished_at \
         FROM payout_items i JOIN payout_batches b ON b.id = i.batch_id \
         WHERE i.creator_id = $1 AND {} ORDER BY {} LIMIT $3",
        page.condition(NEWEST, BATCH_KEY),
        page.order_by(NEWEST),
    ))
    .bind(creator_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// The ids of every open batch (created or sent) on any chain, oldest first: what a payout run
/// started from the command line waits for.
pub async fn open_batch_ids(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT id FROM payout_batches WHERE status IN ('created', 'sent') ORDER BY created_at, id")
        .fetch_all(pool)
        .await?)
}

const BATCH_COLUMNS: &str =
    "id, chain, asset, token, batcher, batch_key, status, total_minor::text AS total, nonce_lost_at";

/// The open batches of a chain, oldest first.
pub async fn open_batches(pool: &PgPool, chain: &ChainId) -> Result<Vec<BatchRow>> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM payout_batches WHERE chain = $1 AND status IN ('created', 'sent') ORDER BY created_at, id"
    ))
    .bind(chain.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(batch_row(&mut conn, row).await?);
    }
    Ok(out)
}

/// A batch row as [`BATCH_COLUMNS`] selects it, with its items.
async fn batch_row(conn: &mut PgConnection, row: &sqlx::postgres::PgRow) -> Result<BatchRow> {
    let id: String = row.try_get("id")?;
    let key: String = row.try_get("batch_key")?;
    let items = sqlx::query(
        "SELECT account, merchant_id, address, amount_minor::text AS amount FROM payout_items \
         WHERE batch_id = $1 ORDER BY position",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let account: String = r.try_get("account")?;
        Ok(ItemRow {
            account: account.parse().map_err(|_| corrupt(account.clone()))?,
            merchant_id: r.try_get("merchant_id")?,
            address: address(&r.try_get::<String, _>("address")?)?,
            amount: amount(&r.try_get::<String, _>("amount")?)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    Ok(BatchRow {
        chain: row.try_get("chain")?,
        asset: row.try_get("asset")?,
        token: address(&row.try_get::<String, _>("token")?)?,
        batcher: address(&row.try_get::<String, _>("batcher")?)?,
        batch_key: key.parse().map_err(|_| corrupt(key.clone()))?,
        status: row.try_get("status")?,
        total: amount(&row.try_get::<String, _>("total")?)?,
        nonce_lost_at: row.try_get::<Option<i64>, _>("nonce_lost_at")?.and_then(|h| u64::try_from(h).ok()),
        id,
        items,
    })
}

/// Cancels a batch no transaction was signed for yet (`created`): it fails with `reason` and every
/// account it paid from gets its amount back, announced as `payout.failed`. A batch already sent is
/// refused (`payout_sent`: its transaction may be mined; it finishes on its own), as is a finished
/// one (`payout_closed`). The batch row is locked as [`record_attempt`] locks it, so a cancel and
/// the executor's first signature cannot both win.
pub async fn cancel(pool: &PgPool, ledger: &Ledger, batch_id: &str, reason: &str, now: DateTime<Utc>) -> Result<PayoutView> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!("SELECT {BATCH_COLUMNS} FROM payout_batches WHERE id = $1 FOR UPDATE"))
        .bind(batch_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| PayoutError::NotFound { id: batch_id.to_owned() })?;
    let batch = batch_row(&mut tx, &row).await?;
    match batch.status.as_str() {
        "created" => {}
        "sent" => {
            return Err(PayoutError::Refused {
                code: "payout_sent",
                reason: format!("payout {batch_id} was sent: its transaction may be mined, so it finishes on its own"),
            })
        }
        other => {
            return Err(PayoutError::Refused { code: "payout_closed", reason: format!("payout {batch_id} is {other}") })
        }
    }
    let chain: ChainId = batch.chain.parse().map_err(|_| corrupt(batch.chain.clone()))?;
    // Nothing was mined, so no gas entry: the native asset is not needed.
    fail_on(&mut tx, ledger, &batch, &chain, "", reason, None, now).await?;
    let view = view_on(&mut tx, batch_id).await?.ok_or_else(|| PayoutError::NotFound { id: batch_id.to_owned() })?;
    tx.commit().await?;
    Ok(view)
}

/// The batch's signed transactions, in the order they were signed.
pub async fn attempts(pool: &PgPool, batch_id: &str) -> Result<Vec<Attempt>> {
    let rows = sqlx::query(
        "SELECT tx_hash, sender, nonce, gas_limit, max_fee_per_gas::text AS max_fee, \
                max_priority_fee_per_gas::text AS tip, raw_tx, created_at \
         FROM payout_attempts WHERE batch_id = $1 ORDER BY seq",
    )
    .bind(batch_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let hash: String = row.try_get("tx_hash")?;
            let fee = |column: &str| -> Result<u128> {
                let text: String = row.try_get(column)?;
                text.parse().map_err(|_| corrupt(text))
            };
            Ok(Attempt {
                tx_hash: hash.parse().map_err(|_| corrupt(hash.clone()))?,
                sender: address(&row.try_get::<String, _>("sender")?)?,
                nonce: u64::try_from(row.try_get::<i64, _>("nonce")?).map_err(|_| corrupt("nonce"))?,
                gas_limit: u64::try_from(row.try_get::<i64, _>("gas_limit")?).map_err(|_| corrupt("gas_limit"))?,
                max_fee_per_gas: fee("max_fee")?,
                max_priority_fee_per_gas: fee("tip")?,
                raw_tx: row.try_get("raw_tx")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// The highest nonce `sender` holds in a batch or sweep still open on `chain`, so a new batch does
/// not take a nonce a stored transaction holds.
pub async fn highest_open_nonce(pool: &PgPool, chain: &ChainId, sender: Address) -> Result<Option<u64>> {
    Ok(crate::chain::evm::nonce::highest_stored_nonce(pool, &chain.to_string(), sender).await?)
}

/// Stores a signed transaction before it is broadcast; the first one moves the batch to `sent`
/// and announces `payout.sent`.
/// A batch that is no longer open (cancelled, or finished meanwhile) is refused: its transaction
/// must never leave. The batch row is locked first, as [`cancel`] locks it, so the two cannot cross.
pub async fn record_attempt(pool: &PgPool, batch_id: &str, attempt: &Attempt, now: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM payout_batches WHERE id = $1 FOR UPDATE")
        .bind(batch_id)
        .fetch_optional(&mut *tx)
        .await?;
    if !matches!(status.as_deref(), Some("created" | "sent")) {
        return Err(PayoutError::Refused {
            code: "payout_closed",
            reason: format!("payout {batch_id} is {}: its transaction is not sent", status.as_deref().unwrap_or("gone")),
        });
    }
    sqlx::query(
        "INSERT INTO payout_attempts (batch_id, tx_hash, sender, nonce, gas_limit, max_fee_per_gas, \
         max_priority_fee_per_gas, raw_tx, created_at) VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric, $8, $9)",
    )
    .bind(batch_id)
    .bind(format!("{:#x}", attempt.tx_hash))
    .bind(format!("{:#x}", attempt.sender))
    .bind(i64_of(attempt.nonce))
    .bind(i64_of(attempt.gas_limit))
    .bind(attempt.max_fee_per_gas.to_string())
    .bind(attempt.max_priority_fee_per_gas.to_string())
    .bind(&attempt.raw_tx)
    .bind(attempt.created_at)
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(
        "UPDATE payout_batches SET status = 'sent', sent_at = $2, updated_at = $2, error = NULL \
         WHERE id = $1 AND status = 'created'",
    )
    .bind(batch_id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 {
        if let Some(view) = view_on(&mut tx, batch_id).await? {
            announce(&mut tx, &view, "payout.sent", now).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Records (or, with `None`, clears) when the batch's nonce was first seen used by another
/// transaction.
pub async fn mark_nonce_lost(pool: &PgPool, batch_id: &str, tip: Option<u64>) -> Result<()> {
    sqlx::query(
        "UPDATE payout_batches SET nonce_lost_at = $2, updated_at = now() WHERE id = $1 AND status IN ('created', 'sent')",
    )
    .bind(batch_id)
    .bind(tip.map(i64_of))
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a transaction every node refused: it can never be mined.
pub async fn forget_attempt(pool: &PgPool, tx_hash: B256) -> Result<()> {
    sqlx::query("DELETE FROM payout_attempts WHERE tx_hash = $1").bind(format!("{tx_hash:#x}")).execute(pool).await?;
    Ok(())
}

/// Notes why an open batch waits (or clears the note), and where its transaction was mined so far.
pub async fn note(pool: &PgPool, batch_id: &str, error: Option<&str>, mined: Option<&Mined>) -> Result<()> {
    sqlx::query(
        "UPDATE payout_batches SET error = $2, tx_hash = COALESCE($3, tx_hash), block_number = COALESCE($4, block_number), \
         updated_at = now() WHERE id = $1 AND status IN ('created', 'sent')",
    )
    .bind(batch_id)
    .bind(error)
    .bind(mined.map(|m| format!("{:#x}", m.tx_hash)))
    .bind(mined.map(|m| i64_of(m.block_number)))
    .execute(pool)
    .await?;
    Ok(())
}

/// The gas entry of a mined transaction: the hot wallet's native coin burnt, booked once per batch.
fn gas_entry(batch_id: &str, chain: &ChainId, native_asset: &str, mined: &Mined) -> Option<NewEntry> {
    (!mined.gas_fee.is_zero()).then(|| {
        NewEntry::new(format!("payout-gas:{batch_id}"), "network_fee")
            .memo(format!("payout {batch_id} {:#x}", mined.tx_hash))
            .debit(AccountCode::network_fees(), native_asset, mined.gas_fee)
            .credit(AccountCode::chain_assets(chain), native_asset, mined.gas_fee)
    })
}

/// Moves an open batch to a final status; `false` if it was already final (nothing is written).
async fn finish(
    conn: &mut PgConnection,
    batch_id: &str,
    status: &str,
    mined: Option<&Mined>,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let moved = sqlx::query(
        "UPDATE payout_batches SET status = $2, tx_hash = $3, block_number = $4, \
         block_hash = $5, gas_fee_minor = $6::numeric, error = $7, finished_at = $8, updated_at = $8 \
         WHERE id = $1 AND status IN ('created', 'sent')",
    )
    .bind(batch_id)
    .bind(status)
    .bind(mined.map(|m| format!("{:#x}", m.tx_hash)))
    .bind(mined.map(|m| i64_of(m.block_number)))
    .bind(mined.map(|m| format!("{:#x}", m.block_hash)))
    .bind(mined.map(|m| m.gas_fee.to_string()))
    .bind(error)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// The batch was paid on chain and is deep enough: the funds left the chain's asset account.
pub async fn settle(
    pool: &PgPool,
    ledger: &Ledger,
    batch: &BatchRow,
    chain: &ChainId,
    native_asset: &str,
    mined: &Mined,
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if !finish(&mut tx, &batch.id, "confirmed", Some(mined), None, now).await? {
        return Ok(false);
    }
    let entry = NewEntry::new(format!("payout-settle:{}", batch.id), "payout_settled")
        .memo(format!("payout {} {:#x}", batch.id, mined.tx_hash))
        .debit(AccountCode::payouts_in_flight(), batch.asset.as_str(), batch.total)
        .credit(AccountCode::chain_assets(chain), batch.asset.as_str(), batch.total);
    ledger.post(&mut tx, &entry).await?;
    if let Some(gas) = gas_entry(&batch.id, chain, native_asset, mined) {
        ledger.post(&mut tx, &gas).await?;
    }
    for refund in batch.items.iter().filter_map(|i| i.account.as_str().strip_prefix("liabilities:refund:")) {
        crate::payments_refund::mark_paid(&mut tx, ledger, refund, &format!("{:#x}", mined.tx_hash), false, now).await?;
    }
    if let Some(view) = view_on(&mut tx, &batch.id).await? {
        announce(&mut tx, &view, "payout.confirmed", now).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The batch was not paid and never will be under this id: every account it paid from (a creator's,
/// or the merchant's for a settlement) gets its amount back.
/// `mined` is a reverted transaction whose gas was still burnt.
#[allow(clippy::too_many_arguments)]
pub async fn fail(
    pool: &PgPool,
    ledger: &Ledger,
    batch: &BatchRow,
    chain: &ChainId,
    native_asset: &str,
    reason: &str,
    mined: Option<&Mined>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if !fail_on(&mut tx, ledger, batch, chain, native_asset, reason, mined, now).await? {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// [`fail`] on the caller's transaction: `false` when the batch was not open.
#[allow(clippy::too_many_arguments)]
async fn fail_on(
    conn: &mut PgConnection,
    ledger: &Ledger,
    batch: &BatchRow,
    chain: &ChainId,
    native_asset: &str,
    reason: &str,
    mined: Option<&Mined>,
    now: DateTime<Utc>,
) -> Result<bool> {
    if !finish(&mut *conn, &batch.id, "failed", mined, Some(reason), now).await? {
        return Ok(false);
    }
    let mut entry = NewEntry::new(format!("payout-return:{}", batch.id), "payout_returned")
        .memo(format!("payout {} failed: {reason}", batch.id))
        .debit(AccountCode::payouts_in_flight(), batch.asset.as_str(), batch.total);
    for item in &batch.items {
        entry = entry.credit(item.account.clone(), batch.asset.as_str(), item.amount);
    }
    ledger.post(&mut *conn, &entry).await?;
    if let Some(gas) = mined.and_then(|m| gas_entry(&batch.id, chain, native_asset, m)) {
        ledger.post(&mut *conn, &gas).await?;
    }
    crate::payments_refund::mark_failed(&mut *conn, &batch.id, now).await?;
    if let Some(view) = view_on(&mut *conn, &batch.id).await? {
        announce(&mut *conn, &view, "payout.failed", now).await?;
    }
    Ok(true)
}

/// When the schedule last ran payouts on `chain`.
pub async fn last_scheduled_run(pool: &PgPool, chain: &ChainId) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT last_run_at FROM payout_schedule WHERE chain = $1")
        .bind(chain.to_string())
        .fetch_optional(pool)
        .await?)
}

pub async fn mark_scheduled_run(conn: &mut PgConnection, chain: &ChainId, at: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO payout_schedule (chain, last_run_at) VALUES ($1, $2) \
         ON CONFLICT (chain) DO UPDATE SET last_run_at = EXCLUDED.last_run_at",
    )
    .bind(chain.to_string())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A fresh run id.
pub fn new_run_id() -> String {
    new_id("run")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(creator: &str, merchant: &str, amount: &str) -> PayoutItemView {
        PayoutItemView {
            recipient: "creator".to_owned(),
            creator_id: Some(creator.to_owned()),
            merchant_id: merchant.to_owned(),
            address: "0x0000000000000000000000000000000000000001".to_owned(),
            amount_minor: amount.to_owned(),
        }
    }

    #[test]
    fn a_merchant_sees_only_its_own_share_of_a_batch() {
        let view = PayoutView {
            id: "po_1".to_owned(),
            run_id: "run_1".to_owned(),
            chain: "eip155:137".to_owned(),
            asset: "eip155:137/erc20:0x01".to_owned(),
            status: "created".to_owned(),
            total_minor: "1000123".to_owned(),
            recipients: 3,
            batch_key: "0x00".to_owned(),
            tx_hash: None,
            block_number: None,
            gas_fee_minor: None,
            error: None,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            sent_at: None,
            finished_at: None,
            items: vec![item("cr_a", "mer_a", "100"), item("cr_b", "mer_b", "1000000"), item("cr_c", "mer_a", "23")],
        };
        let a = merchant_share(&view, "mer_a").expect("share");
        assert_eq!((a.total_minor.as_str(), a.recipients, a.items.len()), ("123", 2, 2));
        assert!(a.items.iter().all(|i| i.merchant_id == "mer_a"));
        let b = merchant_share(&view, "mer_b").expect("share");
        assert_eq!((b.total_minor.as_str(), b.recipients), ("1000000", 1));
    }
}
