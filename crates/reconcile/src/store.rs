//! Reconciliation runs in PostgreSQL: progress, observations and finished reports.

use chrono::{DateTime, Utc};
use payrail_store::page::{Order, Page};
use sqlx::{PgPool, Row};

use crate::ids::new_id;
use crate::money::Amount;

use super::error::{ReconcileError, Result};
use super::model::{ChainObservation, ItemKind, Report};


/// A run as the history lists it; read from `reconciliation_runs` by column name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct RunSummary {
    pub id: String,
    /// CAIP-2 chain id, or `stripe`.
    pub source: String,
    pub from_block: i64,
    pub to_block: i64,
    pub scanned_to: Option<i64>,
    /// `running` (or interrupted: resume it) or `finished`.
    pub status: String,
    pub ok: Option<bool>,
    pub differences: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An unfinished run to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    pub id: String,
    pub source: String,
    pub from_block: u64,
    pub to_block: u64,
    pub scanned_to: Option<u64>,
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub async fn start(pool: &PgPool, source: &str, from_block: u64, to_block: u64) -> Result<String> {
    let id = new_id("rec");
    sqlx::query("INSERT INTO reconciliation_runs (id, source, from_block, to_block, status) VALUES ($1, $2, $3, $4, 'running')")
        .bind(&id)
        .bind(source)
        .bind(i64_of(from_block))
        .bind(i64_of(to_block))
        .execute(pool)
        .await?;
    Ok(id)
}

pub async fn open_run(pool: &PgPool, id: &str) -> Result<OpenRun> {
    let row = sqlx::query("SELECT source, from_block, to_block, scanned_to, status FROM reconciliation_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ReconcileError::NotFound { id: id.to_owned() })?;
    let status: String = row.try_get("status")?;
    if status != "running" {
        return Err(ReconcileError::Range { message: format!("run {id} is already finished") });
    }
    Ok(OpenRun {
        id: id.to_owned(),
        source: row.try_get("source")?,
        from_block: u64_of(row.try_get("from_block")?),
        to_block: u64_of(row.try_get("to_block")?),
        scanned_to: row.try_get::<Option<i64>, _>("scanned_to")?.map(u64_of),
    })
}

/// Stores a chunk's observations and moves the run's progress to `scanned_to`, together.
pub async fn save_chunk(pool: &PgPool, id: &str, observations: &[ChainObservation], scanned_to: u64) -> Result<()> {
    let mut tx = pool.begin().await?;
    for o in observations {
        sqlx::query(
            "INSERT INTO reconciliation_observations (run_id, kind, reference, tx_hash, block_number, asset, address, amount_minor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric) ON CONFLICT (run_id, kind, reference) DO NOTHING",
        )
        .bind(id)
        .bind(o.kind.as_str())
        .bind(&o.reference)
        .bind(&o.tx_hash)
        .bind(i64_of(o.block_number))
        .bind(&o.asset)
        .bind(&o.address)
        .bind(o.amount.to_string())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE reconciliation_runs SET scanned_to = $2 WHERE id = $1").bind(id).bind(i64_of(scanned_to)).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

fn kind_of(text: &str) -> Result<ItemKind> {
    Ok(match text {
        "deposit" => ItemKind::Deposit,
        "payout" => ItemKind::Payout,
        "sweep" => ItemKind::Sweep,
        "manual" => ItemKind::Manual,
        "charge" => ItemKind::Charge,
        "refund" => ItemKind::Refund,
        other => return Err(ReconcileError::Corrupt { value: other.to_owned() }),
    })
}

pub async fn observations(pool: &PgPool, id: &str) -> Result<Vec<ChainObservation>> {
    let rows = sqlx::query(
        "SELECT kind, reference, tx_hash, block_number, asset, address, amount_minor::text AS amount \
         FROM reconciliation_observations WHERE run_id = $1 ORDER BY block_number, reference",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let amount: String = r.try_get("amount")?;
            Ok(ChainObservation {
                kind: kind_of(&r.try_get::<String, _>("kind")?)?,
                reference: r.try_get("reference")?,
                tx_hash: r.try_get("tx_hash")?,
                block_number: u64_of(r.try_get("block_number")?),
                asset: r.try_get("asset")?,
                address: r.try_get("address")?,
                amount: Amount::parse_decimal(&amount, 0).map_err(|_| ReconcileError::Corrupt { value: amount.clone() })?,
            })
        })
        .collect()
}

pub async fn finish(pool: &PgPool, report: &Report) -> Result<()> {
    let json = serde_json::to_value(report).map_err(|e| ReconcileError::Corrupt { value: e.to_string() })?;
    sqlx::query(
        "UPDATE reconciliation_runs SET status = 'finished', ok = $2, differences = $3, report = $4, finished_at = now() \
         WHERE id = $1",
    )
    .bind(&report.run_id)
    .bind(report.ok)
    .bind(i32::try_from(report.differences).unwrap_or(i32::MAX))
    .bind(json)
    .execute(pool)
    .await?;
    Ok(())
}

/// A page of the stored runs, newest first, and whether more follow.
pub async fn list(pool: &PgPool, page: &Page) -> Result<(Vec<RunSummary>, bool)> {
    const ORDER: Order = Order("created_at DESC, id DESC");
    let rows = sqlx::query_as(&format!(
        "SELECT id, source, from_block, to_block, scanned_to, status, ok, differences, created_at, finished_at \
         FROM reconciliation_runs WHERE {} ORDER BY {} LIMIT $2",
        page.condition(ORDER, "SELECT created_at, id FROM reconciliation_runs WHERE id = $1"),
        page.order_by(ORDER),
    ))
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn report(pool: &PgPool, id: &str) -> Result<Report> {
    let json: Option<serde_json::Value> = sqlx::query_scalar("SELECT report FROM reconciliation_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .flatten();
    let json = json.ok_or_else(|| ReconcileError::NotFound { id: id.to_owned() })?;
    serde_json::from_value(json).map_err(|e| ReconcileError::Corrupt { value: e.to_string() })
}
