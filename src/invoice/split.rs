//! Revenue splits: which creators share in an invoice's payments, and the platform's fee.
//!
//! A split is fixed on the invoice when it is created — given with the request, or copied from the
//! merchant's rule for the longest matching `order_id` prefix, else the merchant's default rule —
//! so editing a rule never changes how an existing invoice is credited. When a payment applied to
//! the invoice is credited, [`split_postings`] turns the split into the postings of that one entry:
//! each creator and the platform get their share rounded down, the rounding dust of the allocated
//! part goes to `revenue:rounding`, and the merchant gets the rest.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};

use crate::ledger::AccountCode;
use crate::money::{split_bps, Amount, ConvertError, BPS_WHOLE};

use super::error::{InvoiceError, Result};

/// Most creators one split may name.
pub const SPLIT_CREATORS_MAX: usize = 50;

/// One creator's share, in basis points of each payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatorShare {
    /// The creator id, `cr_…`.
    pub creator: String,
    pub bps: u32,
}

/// The creators' shares and the platform fee of an invoice or a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    #[serde(default)]
    pub splits: Vec<CreatorShare>,
    #[serde(default)]
    pub platform_fee_bps: u32,
}

impl Splits {
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty() && self.platform_fee_bps == 0
    }

    /// Checks what needs no database: bps in range, no creator twice, the total at most the whole.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| InvoiceError::Invalid { field: "splits", reason };
        if self.splits.len() > SPLIT_CREATORS_MAX {
            return Err(invalid(format!("at most {SPLIT_CREATORS_MAX} creators")));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut total = u64::from(self.platform_fee_bps);
        for share in &self.splits {
            if !crate::ids::is_id(&share.creator, "cr") {
                return Err(invalid(format!("{:?} is not a creator id", share.creator)));
            }
            if share.bps == 0 || share.bps > BPS_WHOLE {
                return Err(invalid(format!("bps of {} must be 1..={BPS_WHOLE}", share.creator)));
            }
            if !seen.insert(share.creator.as_str()) {
                return Err(invalid(format!("{} is named twice", share.creator)));
            }
            total += u64::from(share.bps);
        }
        if total > u64::from(BPS_WHOLE) {
            return Err(invalid(format!(
                "creator bps plus platform_fee_bps add up to {total}, more than {BPS_WHOLE}"
            )));
        }
        Ok(())
    }
}

/// Checks that every creator of `splits` belongs to `merchant_id`.
pub async fn check_creators(conn: &mut PgConnection, merchant_id: &str, splits: &Splits) -> Result<()> {
    for share in &splits.splits {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM creators WHERE id = $1 AND merchant_id = $2")
            .bind(&share.creator)
            .bind(merchant_id)
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_none() {
            return Err(InvoiceError::Invalid {
                field: "splits",
                reason: format!("creator {} not found", share.creator),
            });
        }
    }
    Ok(())
}

/// The merchant's rule for `order_id`: the longest matching prefix, else the default (prefix '').
pub async fn matching_rule(conn: &mut PgConnection, merchant_id: &str, order_id: Option<&str>) -> Result<Option<Splits>> {
    let order_id = order_id.unwrap_or("");
    let prefix: Option<(String, i32)> = sqlx::query_as(
        "SELECT order_id_prefix, platform_fee_bps FROM split_rules \
         WHERE merchant_id = $1 AND left($2, length(order_id_prefix)) = order_id_prefix \
         ORDER BY length(order_id_prefix) DESC LIMIT 1",
    )
    .bind(merchant_id)
    .bind(order_id)
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
            .map(|r| {
                Ok(CreatorShare {
                    creator: r.try_get("creator_id")?,
                    bps: bps_of("split_rule_shares.bps", r.try_get("bps")?)?,
                })
            })
            .collect::<Result<_>>()?,
        platform_fee_bps: bps_of("split_rules.platform_fee_bps", platform_fee_bps)?,
    }))
}

fn bps_of(column: &'static str, value: i32) -> Result<u32> {
    u32::try_from(value)
        .ok()
        .filter(|b| *b <= BPS_WHOLE)
        .ok_or(InvoiceError::Corrupt { column, value: value.to_string() })
}

/// Stores `splits` on a new invoice.
pub async fn store_on_invoice(conn: &mut PgConnection, merchant_id: &str, invoice_id: &str, splits: &Splits) -> Result<()> {
    sqlx::query("UPDATE invoices SET platform_fee_bps = $2 WHERE id = $1")
        .bind(invoice_id)
        .bind(i32::try_from(splits.platform_fee_bps).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
    for (position, share) in splits.splits.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_splits (invoice_id, merchant_id, creator_id, bps, position) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(invoice_id)
        .bind(merchant_id)
        .bind(&share.creator)
        .bind(i32::try_from(share.bps).unwrap_or(i32::MAX))
        .bind(i16::try_from(position).unwrap_or(i16::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The split stored on an invoice (empty when it has none), in one query: it is read for every
/// credited payment and every invoice view.
pub async fn load_for_invoice(conn: &mut PgConnection, invoice_id: &str) -> Result<Splits> {
    let rows = sqlx::query(
        "SELECT i.platform_fee_bps, s.creator_id, s.bps FROM invoices i \
         LEFT JOIN invoice_splits s ON s.invoice_id = i.id WHERE i.id = $1 ORDER BY s.position",
    )
    .bind(invoice_id)
    .fetch_all(&mut *conn)
    .await?;
    let platform_fee_bps: i32 = match rows.first() {
        Some(row) => row.try_get("platform_fee_bps")?,
        None => return Err(sqlx::Error::RowNotFound.into()),
    };
    let mut splits = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(creator) = row.try_get::<Option<String>, _>("creator_id")? {
            let bps: i32 = row.try_get("bps")?;
            splits.push(CreatorShare { creator, bps: bps_of("invoice_splits.bps", bps)? });
        }
    }
    Ok(Splits { splits, platform_fee_bps: bps_of("invoices.platform_fee_bps", platform_fee_bps)? })
}

/// The credit side of a payment of `amount` under `splits`: (account, amount) pairs, zero amounts
/// left out, summing to `amount` exactly. Creators and the platform get floor(amount × bps / 10000);
/// `revenue:rounding` gets the dust between the allocated part, floor(amount × Σbps / 10000), and
/// the sum of those shares; the merchant gets the rest.
pub fn split_postings(merchant: AccountCode, amount: Amount, splits: &Splits) -> Result<Vec<(AccountCode, Amount)>, ConvertError> {
    let mut bps: Vec<u32> = splits.splits.iter().map(|s| s.bps).collect();
    bps.push(splits.platform_fee_bps);
    let shares = split_bps(amount, &bps)?;
    let allocated_bps: u32 = bps.iter().sum();
    let allocated = split_bps(amount, &[allocated_bps])?;
    let allocated_total = allocated.shares.first().copied().unwrap_or(Amount::ZERO);
    let shares_total = Amount::checked_sum(shares.shares.iter().copied()).unwrap_or(Amount::ZERO);
    let dust = allocated_total.checked_sub(shares_total).unwrap_or(Amount::ZERO);
    let rest = amount.checked_sub(allocated_total).unwrap_or(Amount::ZERO);

    let mut out = Vec::with_capacity(bps.len() + 2);
    for (share, value) in splits.splits.iter().zip(&shares.shares) {
        out.push((AccountCode::creator(&share.creator), *value));
    }
    if let Some(fee) = shares.shares.last() {
        out.push((AccountCode::platform_fees(), *fee));
    }
    out.push((AccountCode::rounding(), dust));
    out.push((merchant, rest));
    out.retain(|(_, value)| !value.is_zero());
    Ok(out)
}
