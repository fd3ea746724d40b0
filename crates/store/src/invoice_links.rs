//! Which invoices of a set something else hangs on: a credit pack purchase, a subscription period.
//! The invoice store tells those crates of status moves; this lets each answer for a whole step in
//! one query instead of one per invoice.

use sqlx::PgConnection;

/// The entries of `moved` (invoice id, and whether it became paid) whose invoice has a row in
/// `table` (a table with an `invoice_id` column, named by the caller's code, never by input).
pub async fn linked<'a>(conn: &mut PgConnection, table: &'static str, moved: &[(&'a str, bool)]) -> Result<Vec<(&'a str, bool)>, sqlx::Error> {
    let ids: Vec<&str> = moved.iter().map(|(id, _)| *id).collect();
    let found: Vec<String> =
        sqlx::query_scalar(&format!("SELECT invoice_id FROM {table} WHERE invoice_id = ANY($1)")).bind(&ids).fetch_all(conn).await?;
    Ok(moved.iter().copied().filter(|(id, _)| found.iter().any(|f| f == id)).collect())
}
