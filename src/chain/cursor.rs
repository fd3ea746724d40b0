//! The watcher's position on its chain and the recent blocks it has seen, in PostgreSQL.

use sqlx::{PgConnection, Row};

/// A processed block: its height, hash and parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBlock {
    pub height: u64,
    pub hash: String,
    pub parent_hash: String,
}

/// The last block a watcher processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub height: u64,
    pub hash: String,
}

fn height_i64(height: u64) -> i64 {
    i64::try_from(height).unwrap_or(i64::MAX)
}

fn height_u64(height: i64) -> u64 {
    u64::try_from(height).unwrap_or(0)
}

pub async fn load(conn: &mut PgConnection, chain: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let row = sqlx::query("SELECT height, block_hash FROM chain_cursors WHERE chain = $1")
        .bind(chain)
        .fetch_optional(conn)
        .await?;
    row.map(|r| Ok(Cursor { height: height_u64(r.try_get("height")?), hash: r.try_get("block_hash")? })).transpose()
}

/// Moves the cursor; written in the same transaction as what the blocks caused.
pub async fn save(conn: &mut PgConnection, chain: &str, cursor: &Cursor) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chain_cursors (chain, height, block_hash, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (chain) DO UPDATE SET height = EXCLUDED.height, block_hash = EXCLUDED.block_hash, updated_at = now()",
    )
    .bind(chain)
    .bind(height_i64(cursor.height))
    .bind(&cursor.hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores processed blocks and forgets those that fell out of the window of `window` blocks.
pub async fn remember(conn: &mut PgConnection, chain: &str, blocks: &[ChainBlock], window: u64) -> Result<(), sqlx::Error> {
    let Some(last) = blocks.last() else {
        return Ok(());
    };
    let heights: Vec<i64> = blocks.iter().map(|b| height_i64(b.height)).collect();
    let hashes: Vec<&str> = blocks.iter().map(|b| b.hash.as_str()).collect();
    let parents: Vec<&str> = blocks.iter().map(|b| b.parent_hash.as_str()).collect();
    sqlx::query(
        "INSERT INTO chain_blocks (chain, height, block_hash, parent_hash) \
         SELECT $1, h, b, p FROM unnest($2::int8[], $3::text[], $4::text[]) AS x(h, b, p) \
         ON CONFLICT (chain, height) DO UPDATE SET block_hash = EXCLUDED.block_hash, parent_hash = EXCLUDED.parent_hash",
    )
    .bind(chain)
    .bind(&heights)
    .bind(&hashes)
    .bind(&parents)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM chain_blocks WHERE chain = $1 AND height < $2")
        .bind(chain)
        .bind(height_i64(last.height.saturating_sub(window)))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The stored blocks, newest first.
pub async fn recent(conn: &mut PgConnection, chain: &str) -> Result<Vec<ChainBlock>, sqlx::Error> {
    let rows = sqlx::query("SELECT height, block_hash, parent_hash FROM chain_blocks WHERE chain = $1 ORDER BY height DESC")
        .bind(chain)
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ChainBlock {
                height: height_u64(r.try_get("height")?),
                hash: r.try_get("block_hash")?,
                parent_hash: r.try_get("parent_hash")?,
            })
        })
        .collect()
}

/// Forgets every stored block above `height` (they were orphaned).
pub async fn forget_above(conn: &mut PgConnection, chain: &str, height: u64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM chain_blocks WHERE chain = $1 AND height > $2")
        .bind(chain)
        .bind(height_i64(height))
        .execute(conn)
        .await?;
    Ok(())
}
