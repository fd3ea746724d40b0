//! Read-only exports of the ledger for finance: journal entries with their postings, and the trial
//! balance. Nothing here writes.
//!
//! Sign convention, as stored in `postings.amount` (see `migrations/0001_ledger.sql` and
//! [`Posting::signed_amount`](super::Posting::signed_amount)): a posting's `amount_minor` is positive
//! for a debit and negative for a credit, in the asset's smallest unit. A trial balance line reports
//! the debits and credits separately (both non-negative) and the balance in the account's normal
//! direction (debit-normal: assets, expenses; credit-normal: liabilities, equity, revenue), the way
//! [`Ledger::balance`](super::Ledger::balance) reports it, so what is owed to a merchant is positive.
//!
//! Invariants: every amount is a decimal string read from a `::text` cast of `NUMERIC` (never a
//! float) and is checked to parse before it is returned; an exported entry always carries all of its
//! postings, so every exported entry balances per asset on its own; each export reads one snapshot.
//!
//! Time: an entry's `created_at` is the start of the transaction that posted it. A trial balance at a
//! past `at` is final once every transaction that started before `at` has ended.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::page::{Cursor, Order, Page};
use thiserror::Error;

use crate::csv;

use super::account::{AccountCode, AccountType};
use super::entry::ASSET_LEN_MAX;
use super::signed::SignedAmount;

/// Most entries in one page of [`entries`].
pub const ENTRIES_LIMIT_MAX: i64 = 500;
/// Entries in a page when the caller does not say.
pub const ENTRIES_LIMIT_DEFAULT: i64 = 100;
/// Longest `kind` (the database's CHECK agrees).
pub const KIND_LEN_MAX: usize = 64;

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum ExportError {
    /// A filter the caller gave is not valid; asking again with the same filter cannot succeed.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("amount {value:?} of account {account:?} read from the database is not a valid amount")]
    CorruptAmount { account: String, value: String },
    #[error("account code {code:?} read from the database is invalid")]
    CorruptAccount { code: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ExportError {
    /// Serialization failures and lost connections may succeed when retried; bad filters and
    /// corrupt rows never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => crate::db::is_transient(e),
            _ => false,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ExportError {
    ExportError::Invalid { field, reason: reason.into() }
}

/// Which accounts an entry export is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountFilter {
    /// One account.
    Exact(AccountCode),
    /// Every account whose code starts with this prefix, which ends with `:`
    /// (`liabilities:creator:`, or a whole type such as `revenue:`).
    Prefix(String),
}

impl AccountFilter {
    /// `liabilities:creator:cr_x` is one account; `liabilities:creator:` is every creator's.
    pub fn parse(text: &str) -> Result<Self> {
        let refuse = || invalid("account", "must be an account code, or a prefix of one ending in ':'");
        match text.strip_suffix(':') {
            Some(head) => {
                let is_type = ["assets", "liabilities", "equity", "revenue", "expenses"].contains(&head);
                if is_type || head.parse::<AccountCode>().is_ok() {
                    Ok(Self::Prefix(text.to_owned()))
                } else {
                    Err(refuse())
                }
            }
            None => text.parse().map(Self::Exact).map_err(|_| refuse()),
        }
    }

    fn exact(&self) -> Option<&str> {
        match self {
            Self::Exact(code) => Some(code.as_str()),
            Self::Prefix(_) => None,
        }
    }

    fn prefix(&self) -> Option<&str> {
        match self {
            Self::Exact(_) => None,
            Self::Prefix(prefix) => Some(prefix),
        }
    }
}

/// What [`entries`] selects. An entry is selected when it matches every filter given; `account` and
/// `asset` select entries with at least one posting to that account in that asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFilter {
    /// Entries created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Entries created before.
    pub to: Option<DateTime<Utc>>,
    pub account: Option<AccountFilter>,
    /// A CAIP-19 asset (or `iso4217:…` for card balances), exactly as posted.
    pub asset: Option<String>,
    pub kind: Option<String>,
    /// Which page (at most [`ENTRIES_LIMIT_MAX`] entries); the cursors are entry ids.
    pub page: Page,
}

impl Default for EntryFilter {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            account: None,
            asset: None,
            kind: None,
            page: Page::first(ENTRIES_LIMIT_DEFAULT),
        }
    }
}

impl EntryFilter {
    /// Checks every filter without the database.
    pub fn validate(&self) -> Result<()> {
        if !(1..=ENTRIES_LIMIT_MAX).contains(&self.page.limit) {
            return Err(invalid("limit", format!("must be 1 to {ENTRIES_LIMIT_MAX}")));
        }
        if let Some(cursor) = &self.page.cursor {
            let (field, id) = match cursor {
                Cursor::After(id) => ("starting_after", id),
                Cursor::Before(id) => ("ending_before", id),
            };
            if id.parse::<i64>().map_or(true, |id| id < 1) {
                return Err(invalid(field, "must be a journal entry id"));
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(invalid("from", "must not be after to"));
            }
        }
        if let Some(asset) = &self.asset {
            if asset.is_empty() || asset.len() > ASSET_LEN_MAX || asset.chars().any(char::is_control) {
                return Err(invalid("asset", format!("must be an asset id of 1 to {ASSET_LEN_MAX} bytes")));
            }
        }
        if let Some(kind) = &self.kind {
            if kind.is_empty() || kind.len() > KIND_LEN_MAX || kind.chars().any(char::is_control) {
                return Err(invalid("kind", format!("must be 1 to {KIND_LEN_MAX} bytes")));
            }
        }
        Ok(())
    }
}

/// One posting of an exported entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PostingExport {
    pub account: String,
    pub asset: String,
    /// Signed, in the asset's smallest unit: positive for a debit, negative for a credit.
    pub amount_minor: String,
}

/// A journal entry with all of its postings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EntryExport {
    pub id: i64,
    pub idempotency_key: String,
    pub kind: String,
    pub memo: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The entry this one reverses, for a reversal.
    pub reverses_entry_id: Option<i64>,
    /// In the order they were stored: by account, then asset.
    pub postings: Vec<PostingExport>,
}

/// The entries' order: newest (largest id) first; as the page's rows are read again outside it.
const ENTRIES_ORDER: Order = Order("e.id DESC");
const PAGE_ORDER: Order = Order("page.id DESC");

/// Selects the page of entries first, then joins all of their postings, in one statement (one
/// snapshot). The account and asset filters look at any posting of the entry. `{cursor}`,
/// `{order}` and `{page_order}` are the page's (see [`Page`]), the cursor entry id bound at `$4`.
const ENTRIES_SQL: &str = r#"
WITH page AS (
    SELECT e.id, e.idempotency_key, e.kind, e.memo, e.created_at, e.reverses_entry_id
    FROM journal_entries e
    WHERE ($1::timestamptz IS NULL OR e.created_at >= $1)
      AND ($2::timestamptz IS NULL OR e.created_at < $2)
      AND ($3::text IS NULL OR e.kind = $3)
      AND {cursor}
      AND (($5::text IS NULL AND $6::text IS NULL AND $7::text IS NULL) OR EXISTS (
          SELECT 1 FROM postings fp JOIN accounts fa ON fa.id = fp.account_id
          WHERE fp.entry_id = e.id
            AND ($5::text IS NULL OR fa.code = $5)
            AND ($6::text IS NULL OR starts_with(fa.code, $6))
            AND ($7::text IS NULL OR fp.asset = $7)))
    ORDER BY {order}
    LIMIT $8
)
SELECT page.id, page.idempotency_key, page.kind, page.memo, page.created_at, page.reverses_entry_id,
       a.code, p.asset, p.amount::text AS amount
FROM page
JOIN postings p ON p.entry_id = page.id
JOIN accounts a ON a.id = p.account_id
ORDER BY {page_order}, p.id
"#;

/// One posting of [`ENTRIES_SQL`], with its entry.
#[derive(sqlx::FromRow)]
struct EntryRow {
    id: i64,
    idempotency_key: String,
    kind: String,
    memo: Option<String>,
    created_at: DateTime<Utc>,
    reverses_entry_id: Option<i64>,
    code: String,
    asset: String,
    amount: String,
}

/// A trial balance line of [`TRIAL_BALANCE_SQL`].
#[derive(sqlx::FromRow)]
struct LineRow {
    code: String,
    asset: String,
    debit: String,
    credit: String,
    balance: String,
}

/// An asset's totals of [`ASSET_TOTALS_SQL`].
#[derive(sqlx::FromRow)]
struct AssetRow {
    asset: String,
    debit: String,
    credit: String,
    balanced: bool,
}

/// A page of journal entries, newest first, each with all of its postings, and whether more follow.
pub async fn entries(pool: &PgPool, filter: &EntryFilter) -> Result<(Vec<EntryExport>, bool)> {
    filter.validate()?;
    let account = filter.account.as_ref();
    let page = &filter.page;
    // An entry's id is its place in the list: the cursor is its own key.
    let sql = ENTRIES_SQL
        .replace("{cursor}", &page.condition(ENTRIES_ORDER, "SELECT $4::int8"))
        .replace("{order}", &page.order_by(ENTRIES_ORDER))
        .replace("{page_order}", &page.order_by(PAGE_ORDER));
    let rows: Vec<EntryRow> = sqlx::query_as(&sql)
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.kind.as_deref())
        .bind(page.cursor_id().and_then(|c| c.parse::<i64>().ok()))
        .bind(account.and_then(AccountFilter::exact))
        .bind(account.and_then(AccountFilter::prefix))
        .bind(filter.asset.as_deref())
        .bind(page.fetch())
        .fetch_all(pool)
        .await?;
    let mut out: Vec<EntryExport> = Vec::new();
    for row in rows {
        let amount_minor = checked_amount(&row.code, row.amount)?;
        let posting = PostingExport { account: row.code, asset: row.asset, amount_minor };
        match out.last_mut() {
            Some(entry) if entry.id == row.id => entry.postings.push(posting),
            _ => out.push(EntryExport {
                id: row.id,
                idempotency_key: row.idempotency_key,
                kind: row.kind,
                memo: row.memo,
                created_at: row.created_at,
                reverses_entry_id: row.reverses_entry_id,
                postings: vec![posting],
            }),
        }
    }
    Ok(page.finish(out))
}

/// The accounts' types as the API names them.
pub fn account_type_name(account_type: AccountType) -> &'static str {
    match account_type {
        AccountType::Assets => "assets",
        AccountType::Liabilities => "liabilities",
        AccountType::Equity => "equity",
        AccountType::Revenue => "revenue",
        AccountType::Expenses => "expenses",
    }
}

/// One account in one asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TrialBalanceLine {
    pub account: String,
    /// `assets`, `liabilities`, `equity`, `revenue` or `expenses`.
    pub account_type: String,
    pub asset: String,
    /// Sum of the debits, in the asset's smallest unit (not negative).
    pub debit_minor: String,
    /// Sum of the credits, in the asset's smallest unit (not negative).
    pub credit_minor: String,
    /// In the account's normal direction: debits minus credits for assets and expenses, credits
    /// minus debits for liabilities, equity and revenue.
    pub balance_minor: String,
}

/// The check of one asset: over all accounts its debits equal its credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AssetTotals {
    pub asset: String,
    pub debit_minor: String,
    pub credit_minor: String,
    pub balanced: bool,
}

/// The trial balance at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TrialBalance {
    /// Entries created at or before this time are included; all entries when absent.
    pub at: Option<DateTime<Utc>>,
    /// Ordered by account, then asset.
    pub lines: Vec<TrialBalanceLine>,
    /// Ordered by asset.
    pub assets: Vec<AssetTotals>,
}

impl TrialBalance {
    /// Whether debits equal credits in every asset.
    pub fn balanced(&self) -> bool {
        self.assets.iter().all(|a| a.balanced)
    }
}

const TRIAL_BALANCE_SQL: &str = r#"
SELECT a.code, p.asset,
       coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0)::text AS debit,
       coalesce(-sum(p.amount) FILTER (WHERE p.amount < 0), 0)::text AS credit,
       (CASE WHEN a.normal_side = 'debit' THEN sum(p.amount) ELSE -sum(p.amount) END)::text AS balance
FROM postings p
JOIN accounts a ON a.id = p.account_id
JOIN journal_entries e ON e.id = p.entry_id
WHERE ($1::timestamptz IS NULL OR e.created_at <= $1)
GROUP BY a.code, a.normal_side, p.asset
ORDER BY a.code, p.asset
"#;

const ASSET_TOTALS_SQL: &str = r#"
SELECT p.asset,
       coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0)::text AS debit,
       coalesce(-sum(p.amount) FILTER (WHERE p.amount < 0), 0)::text AS credit,
       sum(p.amount) = 0 AS balanced
FROM postings p
JOIN journal_entries e ON e.id = p.entry_id
WHERE ($1::timestamptz IS NULL OR e.created_at <= $1)
GROUP BY p.asset
ORDER BY p.asset
"#;

/// Per account and asset, the postings of entries created at or before `at` (all when `None`),
/// and per asset whether debits equal credits. Both are read in one REPEATABLE READ, read-only
/// transaction, so they describe the same set of entries.
pub async fn trial_balance(pool: &PgPool, at: Option<DateTime<Utc>>) -> Result<TrialBalance> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let line_rows: Vec<LineRow> = sqlx::query_as(TRIAL_BALANCE_SQL).bind(at).fetch_all(&mut *tx).await?;
    let asset_rows: Vec<AssetRow> = sqlx::query_as(ASSET_TOTALS_SQL).bind(at).fetch_all(&mut *tx).await?;
    tx.commit().await?;

    let mut lines = Vec::with_capacity(line_rows.len());
    for row in line_rows {
        let account = row.code;
        let code: AccountCode = account.parse().map_err(|_| ExportError::CorruptAccount { code: account.clone() })?;
        lines.push(TrialBalanceLine {
            account_type: account_type_name(code.account_type()).to_owned(),
            asset: row.asset,
            debit_minor: checked_amount(&account, row.debit)?,
            credit_minor: checked_amount(&account, row.credit)?,
            balance_minor: checked_amount(&account, row.balance)?,
            account,
        });
    }
    let mut assets = Vec::with_capacity(asset_rows.len());
    for row in asset_rows {
        assets.push(AssetTotals {
            debit_minor: checked_amount("*", row.debit)?,
            credit_minor: checked_amount("*", row.credit)?,
            balanced: row.balanced,
            asset: row.asset,
        });
    }
    Ok(TrialBalance { at, lines, assets })
}

/// An amount read back from the database, checked to be an exact signed integer.
fn checked_amount(account: &str, value: String) -> Result<String> {
    match value.parse::<SignedAmount>() {
        Ok(_) => Ok(value),
        Err(_) => Err(ExportError::CorruptAmount { account: account.to_owned(), value }),
    }
}

/// Entries as CSV: a header, then one record per posting (the entry's fields repeated).
pub fn entries_csv(entries: &[EntryExport]) -> String {
    let mut out = String::new();
    csv::push_record(
        &mut out,
        ["entry_id", "created_at", "idempotency_key", "kind", "account", "asset", "amount_minor", "memo"],
    );
    for entry in entries {
        let id = entry.id.to_string();
        let created_at = entry.created_at.to_rfc3339();
        for posting in &entry.postings {
            csv::push_record(
                &mut out,
                [
                    id.as_str(),
                    created_at.as_str(),
                    entry.idempotency_key.as_str(),
                    entry.kind.as_str(),
                    posting.account.as_str(),
                    posting.asset.as_str(),
                    posting.amount_minor.as_str(),
                    entry.memo.as_deref().unwrap_or(""),
                ],
            );
        }
    }
    out
}

/// The trial balance as CSV: a header, then one record per (account, asset). The per-asset check is
/// left to the JSON form; the sums of the debit and credit columns per asset show it here.
pub fn trial_balance_csv(trial_balance: &TrialBalance) -> String {
    let mut out = String::new();
    csv::push_record(&mut out, ["account", "account_type", "asset", "debit_minor", "credit_minor", "balance_minor"]);
    for line in &trial_balance.lines {
        csv::push_record(
            &mut out,
            [
                line.account.as_str(),
                line.account_type.as_str(),
                line.asset.as_str(),
                line.debit_minor.as_str(),
                line.credit_minor.as_str(),
                line.balance_minor.as_str(),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn account_filters_parse() {
        assert_eq!(
            AccountFilter::parse("liabilities:creator:cr_x").expect("exact"),
            AccountFilter::Exact(AccountCode::creator("cr_x"))
        );
        assert_eq!(
            AccountFilter::parse("liabilities:creator:").expect("prefix"),
            AccountFilter::Prefix("liabilities:creator:".to_owned())
        );
        assert_eq!(AccountFilter::parse("revenue:").expect("type"), AccountFilter::Prefix("revenue:".to_owned()));
        for bad in
            ["", ":", "liabilities", "cash:", "liabilities::", "liabilities:cr x:", "liabilities:%:", "assets:x_%"]
        {
            assert!(AccountFilter::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn filters_are_checked() {
        assert!(EntryFilter::default().validate().is_ok());
        for limit in [0, -1, ENTRIES_LIMIT_MAX + 1] {
            assert!(EntryFilter { page: Page::first(limit), ..EntryFilter::default() }.validate().is_err(), "limit {limit}");
        }
        assert!(EntryFilter { page: Page::first(ENTRIES_LIMIT_MAX), ..EntryFilter::default() }.validate().is_ok());
        for cursor in ["0", "x", "-3"] {
            let page = Page { limit: 1, cursor: Some(Cursor::Before(cursor.to_owned())) };
            assert!(EntryFilter { page, ..EntryFilter::default() }.validate().is_err(), "cursor {cursor}");
        }
        assert!(EntryFilter { asset: Some(String::new()), ..EntryFilter::default() }.validate().is_err());
        assert!(EntryFilter { kind: Some("a".repeat(KIND_LEN_MAX + 1)), ..EntryFilter::default() }.validate().is_err());
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time");
        let later = t + chrono::Duration::seconds(1);
        assert!(EntryFilter { from: Some(later), to: Some(t), ..EntryFilter::default() }.validate().is_err());
        assert!(EntryFilter { from: Some(t), to: Some(t), ..EntryFilter::default() }.validate().is_ok());
    }

    fn entry(id: i64, memo: Option<&str>) -> EntryExport {
        EntryExport {
            id,
            idempotency_key: format!("k{id}"),
            kind: "payment".to_owned(),
            memo: memo.map(str::to_owned),
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("time"),
            reverses_entry_id: None,
            postings: vec![
                PostingExport {
                    account: "assets:chain:eip155:1".to_owned(),
                    asset: "iso4217:USD".to_owned(),
                    amount_minor: "250".to_owned(),
                },
                PostingExport {
                    account: "liabilities:merchant:m".to_owned(),
                    asset: "iso4217:USD".to_owned(),
                    amount_minor: "-250".to_owned(),
                },
            ],
        }
    }

    #[test]
    fn entries_csv_has_a_record_per_posting_and_quotes_memos() {
        let csv = entries_csv(&[entry(2, Some("refund, \"late\"")), entry(1, None)]);
        let records: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(records.len(), 1 + 4 + 1, "{csv}");
        assert_eq!(records[0], "entry_id,created_at,idempotency_key,kind,account,asset,amount_minor,memo");
        assert_eq!(
            records[1],
            "2,2026-01-01T12:00:00+00:00,k2,payment,assets:chain:eip155:1,iso4217:USD,250,\"refund, \"\"late\"\"\""
        );
        assert_eq!(records[4], "1,2026-01-01T12:00:00+00:00,k1,payment,liabilities:merchant:m,iso4217:USD,-250,");
        assert_eq!(records[5], "");
    }
}
