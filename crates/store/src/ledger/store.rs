//! The one place the ledger talks to PostgreSQL.
//!
//! An entry is written by a single statement: the journal row, then its postings sorted by
//! (account, asset) so that the posting trigger takes balance-row locks in one global order and
//! concurrent writers cannot deadlock. Run on a bare connection it is its own transaction (one round
//! trip); run inside a caller's transaction it commits with everything else the caller writes. The
//! sum-to-zero check runs at commit.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::RwLock;

use super::account::AccountCode;
use super::entry::{NewEntry, Posting, Side};
use super::EntryError;
use super::error::{LedgerError, Result};
use super::signed::SignedAmount;

/// The outcome of posting: the entry's id, and whether this call created it (false when the
/// idempotency key had already been posted with the same content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub entry_id: i64,
    pub created: bool,
}

/// A journal entry read back from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub idempotency_key: String,
    pub kind: String,
    pub memo: Option<String>,
    pub reverses_entry_id: Option<i64>,
    pub postings: Vec<Posting>,
}

/// The ledger: postings, balances, reversals. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Ledger {
    pool: PgPool,
    account_ids: RwLock<HashMap<AccountCode, i64>>,
}

const POST_SQL: &str = r#"
WITH e AS (
    INSERT INTO journal_entries (idempotency_key, fingerprint, kind, memo, reverses_entry_id)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), p AS (
    INSERT INTO postings (entry_id, account_id, asset, amount)
    SELECT e.id, x.account_id, x.asset, x.amount::numeric
    FROM e, unnest($6::int8[], $7::text[], $8::text[]) WITH ORDINALITY AS x(account_id, asset, amount, ord)
    ORDER BY x.ord
    RETURNING 1
)
SELECT (SELECT id FROM e) AS id, (SELECT count(*) FROM p) AS postings
"#;

/// [`POST_SQL`] for several entries (`$6` numbers each posting's entry, from 1).
const POST_MANY_SQL: &str = r#"
WITH x AS (
    SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::int8[]) WITH ORDINALITY
        AS x(idempotency_key, fingerprint, kind, memo, reverses_entry_id, n)
), e AS (
    INSERT INTO journal_entries (idempotency_key, fingerprint, kind, memo, reverses_entry_id)
    SELECT idempotency_key, fingerprint, kind, memo, reverses_entry_id FROM x ORDER BY n
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
), p AS (
    INSERT INTO postings (entry_id, account_id, asset, amount)
    SELECT e.id, y.account_id, y.asset, y.amount::numeric
    FROM unnest($6::int8[], $7::int8[], $8::text[], $9::text[]) WITH ORDINALITY AS y(entry, account_id, asset, amount, ord)
    JOIN x ON x.n = y.entry JOIN e ON e.idempotency_key = x.idempotency_key
    ORDER BY y.ord
    RETURNING 1
)
SELECT e.id, (SELECT count(*) FROM p) AS postings FROM x LEFT JOIN e USING (idempotency_key) ORDER BY x.n
"#;

impl Ledger {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, account_ids: RwLock::new(HashMap::new()) }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The id of an account, created on first use on `conn`, so no second connection is needed.
    /// `autocommit` says that `conn` is not inside a transaction: an account created there is
    /// committed at once and may be cached. One created inside a caller's transaction is not cached,
    /// since that transaction may still roll back.
    pub async fn account_id(&self, conn: &mut PgConnection, code: &AccountCode, autocommit: bool) -> Result<i64> {
        if let Some(id) = self.account_ids.read().await.get(code) {
            return Ok(*id);
        }
        let account_type = code.account_type();
        let normal_side = if account_type.is_debit_normal() { "debit" } else { "credit" };
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO accounts (code, normal_side, non_negative, balance_shards) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (code) DO NOTHING RETURNING id",
        )
        .bind(code.as_str())
        .bind(normal_side)
        .bind(code.is_non_negative())
        .bind(code.balance_shards())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = inserted {
            if autocommit {
                self.account_ids.write().await.insert(code.clone(), id);
            }
            return Ok(id);
        }
        // The conflict means another transaction created it and committed (ON CONFLICT waits).
        let id: i64 = sqlx::query_scalar("SELECT id FROM accounts WHERE code = $1")
            .bind(code.as_str())
            .fetch_one(&mut *conn)
            .await?;
        self.account_ids.write().await.insert(code.clone(), id);
        Ok(id)
    }

    /// Resolves the accounts of `entries` in code order: concurrent first uses of the same accounts
    /// then wait on each other in one order and cannot deadlock.
    async fn account_ids_of(
        &self,
        conn: &mut PgConnection,
        entries: &[&NewEntry],
        autocommit: bool,
    ) -> Result<HashMap<AccountCode, i64>> {
        let mut codes: Vec<&AccountCode> = entries.iter().flat_map(|e| e.postings.iter().map(|p| &p.account)).collect();
        codes.sort();
        codes.dedup();
        let mut ids = HashMap::with_capacity(codes.len());
        for code in codes {
            ids.insert(code.clone(), self.account_id(&mut *conn, code, autocommit).await?);
        }
        Ok(ids)
    }

    /// Posts an entry on `conn` (a bare connection, or a transaction the caller commits).
    ///
    /// Posting a key that was already posted with the same content returns the first entry and
    /// changes nothing; the same key with other content is an [`LedgerError::IdempotencyConflict`].
    pub async fn post(&self, conn: &mut PgConnection, entry: &NewEntry) -> Result<Posted> {
        entry.validate()?;
        self.post_with(conn, entry, false).await
    }

    async fn post_with(&self, conn: &mut PgConnection, entry: &NewEntry, autocommit: bool) -> Result<Posted> {
        let account_ids = self.account_ids_of(&mut *conn, &[entry], autocommit).await?;
        let (ids, assets, amounts) = postings_of(entry, &account_ids)?;
        let fingerprint = entry.fingerprint();
        let row = sqlx::query(POST_SQL)
            .bind(&entry.idempotency_key)
            .bind(&fingerprint[..])
            .bind(&entry.kind)
            .bind(&entry.memo)
            .bind(entry.reverses_entry_id)
            .bind(&ids)
            .bind(&assets)
            .bind(&amounts)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map_db_error(e, &entry.idempotency_key))?;
        if let Some(entry_id) = row.try_get::<Option<i64>, _>("id")? {
            return Ok(Posted { entry_id, created: true });
        }
        let mut standing = self.standing(conn, &[(&entry.idempotency_key, fingerprint)]).await?;
        standing.pop().ok_or(LedgerError::IdempotencyConflict { key: entry.idempotency_key.clone() })
    }

    /// Posts `entries` (distinct idempotency keys) on `conn`, as [`Ledger::post`] posts each, in one
    /// statement: a chain step's credits move each balance row once, however many they are.
    pub async fn post_many(&self, conn: &mut PgConnection, entries: &[&NewEntry]) -> Result<Vec<Posted>> {
        let Some(first) = entries.first() else { return Ok(Vec::new()) };
        let mut keys: Vec<&str> = entries.iter().map(|e| e.idempotency_key.as_str()).collect();
        keys.sort_unstable();
        if let Some(twice) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(LedgerError::IdempotencyConflict { key: twice[0].to_owned() });
        }
        for entry in entries {
            entry.validate()?;
        }
        let account_ids = self.account_ids_of(&mut *conn, entries, false).await?;
        let (mut numbers, mut ids, mut assets, mut amounts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (n, entry) in (1_i64..).zip(entries) {
            let (entry_ids, entry_assets, entry_amounts) = postings_of(entry, &account_ids)?;
            numbers.extend(std::iter::repeat_n(n, entry_ids.len()));
            ids.extend(entry_ids);
            assets.extend(entry_assets);
            amounts.extend(entry_amounts);
        }
        let fingerprints: Vec<Vec<u8>> = entries.iter().map(|e| e.fingerprint().to_vec()).collect();
        let rows = sqlx::query(POST_MANY_SQL)
            .bind(entries.iter().map(|e| e.idempotency_key.as_str()).collect::<Vec<_>>())
            .bind(&fingerprints)
            .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.memo.as_deref()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.reverses_entry_id).collect::<Vec<_>>())
            .bind(&numbers)
            .bind(&ids)
            .bind(&assets)
            .bind(&amounts)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| map_db_error(e, &first.idempotency_key))?;
        let mut posted = Vec::with_capacity(entries.len());
        let mut earlier = Vec::new();
        for ((entry, row), fingerprint) in entries.iter().zip(&rows).zip(fingerprints) {
            match row.try_get::<Option<i64>, _>("id")? {
                Some(entry_id) => posted.push(Some(Posted { entry_id, created: true })),
                None => {
                    posted.push(None);
                    earlier.push((entry.idempotency_key.as_str(), fingerprint));
                }
            }
        }
        let mut standing = self.standing(conn, &earlier).await?.into_iter();
        posted
            .into_iter()
            .zip(entries)
            .map(|(p, e)| p.or_else(|| standing.next()).ok_or_else(|| LedgerError::IdempotencyConflict { key: e.idempotency_key.clone() }))
            .collect()
    }

    /// The entries already posted under `keys`, in that order, each checked to hold the same
    /// content (`fingerprint`): the same key with other content is an
    /// [`LedgerError::IdempotencyConflict`].
    async fn standing<F: AsRef<[u8]>>(&self, conn: &mut PgConnection, keys: &[(&str, F)]) -> Result<Vec<Posted>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT idempotency_key, id, fingerprint FROM journal_entries WHERE idempotency_key = ANY($1)")
            .bind(keys.iter().map(|(k, _)| *k).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        let mut found: HashMap<String, (i64, Vec<u8>)> = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(row.try_get("idempotency_key")?, (row.try_get("id")?, row.try_get("fingerprint")?));
        }
        keys.iter()
            .map(|(key, fingerprint)| match found.get(*key) {
                Some((entry_id, stored)) if stored.as_slice() == fingerprint.as_ref() => Ok(Posted { entry_id: *entry_id, created: false }),
                _ => Err(LedgerError::IdempotencyConflict { key: (*key).to_owned() }),
            })
            .collect()
    }

    /// Posts an entry as its own transaction: its accounts are created first (each committed on its
    /// own), then the entry is one statement in autocommit — one round trip, and the shortest time a
    /// balance row stays locked.
    pub async fn post_now(&self, entry: &NewEntry) -> Result<Posted> {
        entry.validate()?;
        let mut conn = self.pool.acquire().await?;
        self.post_with(&mut conn, entry, true).await
    }

    /// Corrects an entry by posting its mirror image under `idempotency_key`. An entry is reversed
    /// at most once (the database holds a UNIQUE on the reversed id).
    pub async fn reverse(
        &self,
        conn: &mut PgConnection,
        entry_id: i64,
        idempotency_key: &str,
        memo: &str,
    ) -> Result<Posted> {
        let original = self.entry(conn, entry_id).await?;
        let reversal = NewEntry {
            idempotency_key: idempotency_key.to_owned(),
            kind: "reversal".to_owned(),
            memo: Some(memo.to_owned()),
            postings: original.postings.iter().map(Posting::reversed).collect(),
            reverses_entry_id: Some(entry_id),
        };
        match self.post(conn, &reversal).await {
            Err(LedgerError::Database(sqlx::Error::Database(db)))
                if db.constraint() == Some("journal_entries_reverses_entry_id_key") =>
            {
                Err(LedgerError::AlreadyReversed { entry_id })
            }
            other => other,
        }
    }

    /// Reads an entry and its postings.
    pub async fn entry(&self, conn: &mut PgConnection, entry_id: i64) -> Result<Entry> {
        let head = sqlx::query(
            "SELECT id, idempotency_key, kind, memo, reverses_entry_id FROM journal_entries WHERE id = $1",
        )
        .bind(entry_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(LedgerError::EntryNotFound { entry_id })?;
        let rows = sqlx::query(
            "SELECT a.code, p.asset, p.amount::text AS amount FROM postings p \
             JOIN accounts a ON a.id = p.account_id WHERE p.entry_id = $1 ORDER BY p.id",
        )
        .bind(entry_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut postings = Vec::with_capacity(rows.len());
        for row in rows {
            let code: String = row.try_get("code")?;
            let amount = parse_signed(&row.try_get::<String, _>("amount")?)?;
            let side = if amount.is_negative() { Side::Credit } else { Side::Debit };
            postings.push(Posting {
                account: code.parse()?,
                asset: row.try_get("asset")?,
                side,
                amount: amount.magnitude(),
            });
        }
        Ok(Entry {
            id: head.try_get("id")?,
            idempotency_key: head.try_get("idempotency_key")?,
            kind: head.try_get("kind")?,
            memo: head.try_get("memo")?,
            reverses_entry_id: head.try_get("reverses_entry_id")?,
            postings,
        })
    }

    /// The balance of one account in one asset, in the account's normal direction (what is owed to
    /// a merchant is positive). An account never posted to has a zero balance.
    pub async fn balance(&self, conn: &mut PgConnection, code: &AccountCode, asset: &str) -> Result<SignedAmount> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT sum(b.balance)::text FROM balances b JOIN accounts a ON a.id = b.account_id \
             WHERE a.code = $1 AND b.asset = $2",
        )
        .bind(code.as_str())
        .bind(asset)
        .fetch_one(&mut *conn)
        .await?;
        text.map_or(Ok(SignedAmount::ZERO), |t| parse_signed(&t))
    }

    /// Every asset balance of one account, ordered by asset.
    pub async fn balances(&self, conn: &mut PgConnection, code: &AccountCode) -> Result<Vec<(String, SignedAmount)>> {
        let rows = sqlx::query(
            "SELECT b.asset, sum(b.balance)::text AS balance FROM balances b \
             JOIN accounts a ON a.id = b.account_id WHERE a.code = $1 GROUP BY b.asset ORDER BY b.asset",
        )
        .bind(code.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get("asset")?, parse_signed(&row.try_get::<String, _>("balance")?)?)))
            .collect()
    }
}

fn parse_signed(text: &str) -> Result<SignedAmount> {
    text.parse().map_err(|_| LedgerError::CorruptAmount { value: text.to_owned() })
}

/// Turns the database's refusals into the ledger's own errors.
/// An entry's postings as the posting statements bind them — account ids, assets, signed amounts —
/// in (account id, asset, side) order: the lock order every writer follows.
fn postings_of(entry: &NewEntry, account_ids: &HashMap<AccountCode, i64>) -> Result<(Vec<i64>, Vec<String>, Vec<String>)> {
    let mut rows = Vec::with_capacity(entry.postings.len());
    for posting in &entry.postings {
        let id = account_ids.get(&posting.account).copied().ok_or_else(|| EntryError::InvalidAccount { code: posting.account.to_string() })?;
        rows.push((id, posting));
    }
    rows.sort_by(|(a_id, a), (b_id, b)| (a_id, &a.asset, a.side).cmp(&(b_id, &b.asset, b.side)));
    let ids = rows.iter().map(|(id, _)| *id).collect();
    let assets = rows.iter().map(|(_, p)| p.asset.clone()).collect();
    let amounts = rows.iter().map(|(_, p)| p.signed_amount().to_string()).collect();
    Ok((ids, assets, amounts))
}

fn map_db_error(error: sqlx::Error, key: &str) -> LedgerError {
    if let sqlx::Error::Database(db) = &error {
        match db.code().as_deref() {
            Some("PRL04") => {
                return LedgerError::InsufficientBalance { key: key.to_owned(), message: db.message().to_owned() }
            }
            Some("PRL02") => {
                return EntryError::InvalidEntry { key: key.to_owned(), reason: db.message().to_owned() }.into()
            }
            _ => {}
        }
    }
    LedgerError::Database(error)
}
