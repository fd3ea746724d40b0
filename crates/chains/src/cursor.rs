//! The follower's position on its chain and the recent blocks it has seen, in PostgreSQL. Hashes
//! are stored as text in their family's spelling ([`BlockHash::to_stored`]).

use sqlx::{PgConnection, Row};

use super::source::{Block, BlockHash, BlockId};

fn height_i64(height: u64) -> i64 {
    i64::try_from(height).unwrap_or(i64::MAX)
}

fn height_u64(row: &sqlx::postgres::PgRow) -> Result<u64, sqlx::Error> {
    Ok(u64::try_from(row.try_get::<i64, _>("height")?).unwrap_or(0))
}

fn hash<H: BlockHash>(row: &sqlx::postgres::PgRow, column: &str) -> Result<H, sqlx::Error> {
    let text: String = row.try_get(column)?;
    H::from_stored(&text).ok_or_else(|| sqlx::Error::Decode(format!("{column} {text:?} is not a block hash of this chain").into()))
}

/// The last block the follower processed.
pub async fn load<H: BlockHash>(conn: &mut PgConnection, chain: &str) -> Result<Option<BlockId<H>>, sqlx::Error> {
    let row = sqlx::query("SELECT height, block_hash FROM chain_cursors WHERE chain = $1").bind(chain).fetch_optional(conn).await?;
    row.map(|r| Ok(BlockId { height: height_u64(&r)?, hash: hash(&r, "block_hash")? })).transpose()
}

/// Moves the cursor; written in the same transaction as what the blocks caused.
pub async fn save<H: BlockHash>(conn: &mut PgConnection, chain: &str, cursor: &BlockId<H>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chain_cursors (chain, height, block_hash, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (chain) DO UPDATE SET height = EXCLUDED.height, block_hash = EXCLUDED.block_hash, updated_at = now()",
    )
    .bind(chain)
    .bind(height_i64(cursor.height))
    .bind(cursor.hash.to_stored())
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores processed blocks and forgets those that fell out of the window of `window` blocks.
pub async fn remember<H: BlockHash>(conn: &mut PgConnection, chain: &str, blocks: &[Block<H>], window: u64) -> Result<(), sqlx::Error> {
    let Some(last) = blocks.last() else {
        return Ok(());
    };
    let heights: Vec<i64> = blocks.iter().map(|b| height_i64(b.height)).collect();
    let hashes: Vec<String> = blocks.iter().map(|b| b.hash.to_stored()).collect();
    let parents: Vec<String> = blocks.iter().map(|b| b.parent.to_stored()).collect();
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
pub async fn recent<H: BlockHash>(conn: &mut PgConnection, chain: &str) -> Result<Vec<Block<H>>, sqlx::Error> {
    let rows = sqlx::query("SELECT height, block_hash, parent_hash FROM chain_blocks WHERE chain = $1 ORDER BY height DESC")
        .bind(chain)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| Ok(Block { height: height_u64(r)?, hash: hash(r, "block_hash")?, parent: hash(r, "parent_hash")? })).collect()
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
