//! The merchants' revenue split rules as stored: which rule applies to an order or a resource (the
//! longest matching prefix, else the default) and whether creators named in a split are the
//! merchant's. Invoices and credit spends choose their split through these.

use sqlx::{PgConnection, Row};

use payrail_core::money::BPS_WHOLE;
use payrail_core::payment::split::{CreatorShare, Splits};

#[derive(Debug, thiserror::Error)]
pub enum SplitsError {
    #[error("creator {creator} not found")]
    UnknownCreator { creator: String },
    #[error("stored {column} {value} is not valid")]
    Corrupt { column: &'static str, value: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Checks that every creator of `splits` belongs to `merchant_id`.
pub async fn check_creators(conn: &mut PgConnection, merchant_id: &str, splits: &Splits) -> Result<(), SplitsError> {
    for share in &splits.splits {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM creators WHERE id = $1 AND merchant_id = $2")
            .bind(&share.creator)
            .bind(merchant_id)
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_none() {
            return Err(SplitsError::UnknownCreator { creator: share.creator.clone() });
        }
    }
    Ok(())
}

/// The merchant's rule for `key` (an order id, a resource): the longest matching prefix, else the
/// default (prefix '').
pub async fn matching_rule(conn: &mut PgConnection, merchant_id: &str, key: Option<&str>) -> Result<Option<Splits>, SplitsError> {
    let key = key.unwrap_or("");
    let prefix: Option<(String, i32)> = sqlx::query_as(
        "SELECT order_id_prefix, platform_fee_bps FROM split_rules \
         WHERE merchant_id = $1 AND left($2, length(order_id_prefix)) = order_id_prefix \
         ORDER BY length(order_id_prefix) DESC LIMIT 1",
    )
    .bind(merchant_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((prefix, platform_fee_bps)) = prefix else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT creator_id, bps FROM split_rule_shares WHERE merchant_id = $1 AND order_id_prefix = $2 ORDER BY position",
    )
    .bind(merchant_id)
    .bind(&prefix)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Splits {
        splits: rows
            .iter()
            .map(|r| Ok(CreatorShare { creator: r.try_get("creator_id")?, bps: bps_of("split_rule_shares.bps", r.try_get("bps")?)? }))
            .collect::<Result<_, SplitsError>>()?,
        platform_fee_bps: bps_of("split_rules.platform_fee_bps", platform_fee_bps)?,
    }))
}

/// A stored basis-point value, checked.
pub fn bps_of(column: &'static str, value: i32) -> Result<u32, SplitsError> {
    u32::try_from(value).ok().filter(|b| *b <= BPS_WHOLE).ok_or(SplitsError::Corrupt { column, value: value.to_string() })
}
