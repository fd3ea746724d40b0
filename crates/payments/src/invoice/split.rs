//! Revenue splits: which creators share in an invoice's payments, and the platform's fee.
//!
//! A split is fixed on the invoice when it is created — given with the request, or copied from the
//! merchant's rule for the longest matching `order_id` prefix, else the merchant's default rule —
//! so editing a rule never changes how an existing invoice is credited. When a payment applied to
//! the invoice is credited, [`split_postings`] turns the split into the postings of that one entry:
//! each creator and the platform get their share rounded down, the rounding dust of the allocated
//! part goes to `revenue:rounding`, and the merchant gets the rest.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use payrail_store::splits::SplitsError;

use super::error::{InvoiceError, Result};
pub use payrail_core::payment::split::{split_postings, CreatorShare, SplitInvalid, Splits, SPLIT_CREATORS_MAX};

/// Checks that every creator of `splits` belongs to `merchant_id`.
pub async fn check_creators(conn: &mut PgConnection, merchant_id: &str, splits: &Splits) -> Result<()> {
    payrail_store::splits::check_creators(conn, merchant_id, splits).await.map_err(from_store)
}

/// The merchant's rule for `order_id`: the longest matching prefix, else the default (prefix '').
pub async fn matching_rule(conn: &mut PgConnection, merchant_id: &str, order_id: Option<&str>) -> Result<Option<Splits>> {
    payrail_store::splits::matching_rule(conn, merchant_id, order_id).await.map_err(from_store)
}

pub(crate) fn bps_of(column: &'static str, value: i32) -> Result<u32> {
    payrail_store::splits::bps_of(column, value).map_err(from_store)
}

fn from_store(error: SplitsError) -> InvoiceError {
    match error {
        SplitsError::UnknownCreator { creator } => InvoiceError::Invalid { field: "splits", reason: format!("creator {creator} not found") },
        SplitsError::Corrupt { column, value } => InvoiceError::Corrupt { column, value },
        SplitsError::Database(e) => InvoiceError::Database(e),
    }
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
    load_for_invoices(conn, &[invoice_id]).await?.remove(invoice_id).ok_or_else(|| sqlx::Error::RowNotFound.into())
}

/// [`load_for_invoice`] of the invoices `ids`, in one query; an id with no invoice is absent.
pub async fn load_for_invoices(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, Splits>> {
    let rows = sqlx::query(
        "SELECT i.id, i.platform_fee_bps, s.creator_id, s.bps FROM invoices i \
         LEFT JOIN invoice_splits s ON s.invoice_id = i.id WHERE i.id = ANY($1) ORDER BY i.id, s.position",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut all: HashMap<String, Splits> = HashMap::with_capacity(ids.len());
    for row in &rows {
        let id: String = row.try_get("id")?;
        let splits = match all.entry(id) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let bps = bps_of("invoices.platform_fee_bps", row.try_get("platform_fee_bps")?)?;
                entry.insert(Splits { splits: Vec::new(), platform_fee_bps: bps })
            }
        };
        if let Some(creator) = row.try_get::<Option<String>, _>("creator_id")? {
            let bps: i32 = row.try_get("bps")?;
            splits.splits.push(CreatorShare { creator, bps: bps_of("invoice_splits.bps", bps)? });
        }
    }
    Ok(all)
}
