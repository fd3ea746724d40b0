//! Statements: every posting on one holder's accounts (a creator's balance; a merchant's available
//! and unapplied balances), oldest first, in pages that never split an entry.
//!
//! Amounts are signed in the account's normal direction, so a line that raises what is owed to the
//! holder is positive whatever the account type; they are read from a `::text` cast of `NUMERIC` and
//! checked to parse. A page ends on an entry boundary, so a cursor (an entry id) skips nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::page::{Order, Page};

use crate::csv;

use super::account::AccountCode;
use super::error::{LedgerError, Result};
use super::signed::SignedAmount;

/// Most lines in one page.
pub const STATEMENT_PAGE_LIMIT_MAX: i64 = 1_000;

/// Which lines: `from <= time < to`, a page of at most `page.limit` lines on either side of an
/// entry (a page never splits an entry's lines unless one entry alone exceeds it).
#[derive(Debug, Clone)]
pub struct StatementRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub page: Page,
}

/// Entries oldest first; an entry's lines in posting order.
const ENTRY_ORDER: Order = Order("e.created_at, e.id");
const LINE_ORDER: Order = Order("e.created_at, e.id, p.id");

/// One posting on one of the holder's accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatementLine {
    pub entry_id: i64,
    pub at: DateTime<Utc>,
    /// The entry's kind: `payment`, `reversal`, `refund`, `payout`, `payout_returned`, …
    pub kind: String,
    /// The ledger account the posting is on.
    pub account: String,
    pub asset: String,
    /// Signed, in the asset's smallest unit: positive raises what is owed to the holder.
    pub amount_minor: String,
    /// The invoice the entry is about, when its memo names one.
    pub invoice_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StatementRow {
    id: i64,
    created_at: DateTime<Utc>,
    kind: String,
    code: String,
    asset: String,
    amount: String,
    memo: Option<String>,
}

/// A page of the postings on `accounts`, oldest first, and whether more follow.
pub async fn statement(pool: &PgPool, accounts: &[AccountCode], range: &StatementRange) -> Result<(Vec<StatementLine>, bool)> {
    let page = Page { limit: range.page.limit.clamp(1, STATEMENT_PAGE_LIMIT_MAX), cursor: range.page.cursor.clone() };
    let codes: Vec<&str> = accounts.iter().map(AccountCode::as_str).collect();
    let mut rows: Vec<StatementRow> = sqlx::query_as(&format!(
        "SELECT e.id, e.created_at, e.kind, a.code, p.asset, p.amount::text AS amount, e.memo \
         FROM postings p JOIN accounts a ON a.id = p.account_id JOIN journal_entries e ON e.id = p.entry_id \
         WHERE a.code = ANY ($1) AND ($2::timestamptz IS NULL OR e.created_at >= $2) \
               AND ($3::timestamptz IS NULL OR e.created_at < $3) AND {} \
         ORDER BY {} LIMIT $5",
        page.condition(ENTRY_ORDER, "SELECT created_at, id FROM journal_entries WHERE id = $4::bigint"),
        page.order_by(LINE_ORDER),
    ))
    .bind(&codes)
    .bind(range.from)
    .bind(range.to)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    // Rows come in the order read (backward: newest first). When more follow, the page gives back
    // the lines of the entry the limit cut, unless that entry is all it holds.
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    if has_more {
        let next = rows[limit].id;
        let mut end = limit;
        while end > 0 && rows[end - 1].id == next {
            end -= 1;
        }
        rows.truncate(if end == 0 { limit } else { end });
    }
    let (rows, has_more) = page.arrange(rows, has_more);
    let lines = rows.into_iter().map(line).collect::<Result<Vec<_>>>()?;
    Ok((lines, has_more))
}

/// Postings are stored debit-positive; on a credit-normal account (what is owed to a holder) the
/// sign flips.
fn line(row: StatementRow) -> Result<StatementLine> {
    let stored: SignedAmount = row.amount.parse().map_err(|_| LedgerError::CorruptAmount { value: row.amount.clone() })?;
    let account: AccountCode = row.code.parse()?;
    let amount = if account.account_type().is_debit_normal() { stored } else { stored.negated() };
    let invoice_id = row.memo.as_deref().and_then(|m| m.split_whitespace().find(|w| crate::ids::is_id(w, "inv"))).map(str::to_owned);
    Ok(StatementLine {
        entry_id: row.id,
        at: row.created_at,
        kind: row.kind,
        account: row.code,
        asset: row.asset,
        amount_minor: amount.to_string(),
        invoice_id,
    })
}

/// The lines as CSV (RFC 4180, see [`crate::csv`]): a header, then one record per posting. The
/// `account` column is left out for a holder with one account (a creator).
pub fn statement_csv(lines: &[StatementLine], with_account: bool) -> String {
    let mut out = String::new();
    let mut header = vec!["entry_id", "at", "kind"];
    if with_account {
        header.push("account");
    }
    header.extend(["asset", "amount_minor", "invoice_id"]);
    csv::push_record(&mut out, header);
    for line in lines {
        let entry_id = line.entry_id.to_string();
        let at = line.at.to_rfc3339();
        let mut record = vec![entry_id.as_str(), at.as_str(), line.kind.as_str()];
        if with_account {
            record.push(line.account.as_str());
        }
        record.extend([line.asset.as_str(), line.amount_minor.as_str(), line.invoice_id.as_deref().unwrap_or("")]);
        csv::push_record(&mut out, record);
    }
    out
}
