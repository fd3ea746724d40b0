//! The ledger against a real PostgreSQL: the database refuses what the ledger forbids.


use std::collections::HashMap;
use std::sync::Arc;

use crate::common::{amount, transfer, USD};
use payrail::ledger::{AccountCode, Ledger, LedgerError, NewEntry, SignedAmount};
use sqlx::{PgPool, Row};

fn chain_account() -> AccountCode {
    AccountCode::chain_assets(&"eip155:1".parse().expect("caip-2"))
}

#[sqlx::test]
async fn posting_moves_balances_in_normal_direction(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let merchant = AccountCode::merchant("mer_a");
    let posted = ledger.post_now(&transfer("k1", chain_account(), merchant.clone(), USD, 2500)).await.expect("post");
    assert!(posted.created);
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(ledger.balance(&mut conn, &merchant, USD).await.expect("balance"), SignedAmount::positive(amount(2500)));
    assert_eq!(ledger.balance(&mut conn, &chain_account(), USD).await.expect("balance"), SignedAmount::positive(amount(2500)));
    let entry = ledger.entry(&mut conn, posted.entry_id).await.expect("entry");
    assert_eq!(entry.postings.len(), 2);
    assert_eq!(entry.idempotency_key, "k1");
}

#[sqlx::test]
async fn same_key_twice_returns_first_entry_and_changes_nothing(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let merchant = AccountCode::merchant("mer_a");
    let entry = transfer("dup", chain_account(), merchant.clone(), USD, 100);
    let first = ledger.post_now(&entry).await.expect("first");
    let second = ledger.post_now(&entry).await.expect("second");
    assert_eq!(first.entry_id, second.entry_id);
    assert!(first.created && !second.created);
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(ledger.balance(&mut conn, &merchant, USD).await.expect("balance"), SignedAmount::positive(amount(100)));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("count");
    assert_eq!(count, 1);

    let other = transfer("dup", chain_account(), merchant, USD, 101);
    assert!(matches!(ledger.post_now(&other).await, Err(LedgerError::IdempotencyConflict { .. })));
}

#[sqlx::test]
async fn guarded_account_cannot_go_negative_and_failure_leaves_nothing(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let merchant = AccountCode::merchant("mer_a");
    ledger.post_now(&transfer("in", chain_account(), merchant.clone(), USD, 100)).await.expect("credit");
    // Paying the merchant out 101 would leave the platform owing -1.
    let err = ledger
        .post_now(&transfer("out", merchant.clone(), chain_account(), USD, 101))
        .await
        .expect_err("overdraft refused");
    assert!(matches!(err, LedgerError::InsufficientBalance { .. }), "{err:?}");
    assert!(err.to_string().contains("liabilities:merchant:mer_a"), "{err}");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("count");
    let postings: i64 = sqlx::query_scalar("SELECT count(*) FROM postings").fetch_one(&pool).await.expect("count");
    assert_eq!((entries, postings), (1, 2));
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(ledger.balance(&mut conn, &merchant, USD).await.expect("balance"), SignedAmount::positive(amount(100)));
    // Exactly the balance is fine.
    ledger.post_now(&transfer("out2", merchant.clone(), chain_account(), USD, 100)).await.expect("drain");
    assert_eq!(ledger.balance(&mut conn, &merchant, USD).await.expect("balance"), SignedAmount::ZERO);
}

#[sqlx::test]
async fn failed_entry_inside_a_transaction_leaves_nothing_behind(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let merchant = AccountCode::merchant("mer_a");
    let mut tx = pool.begin().await.expect("begin");
    ledger.post(&mut tx, &transfer("a", chain_account(), merchant.clone(), USD, 5)).await.expect("first in tx");
    let err = ledger.post(&mut tx, &transfer("b", merchant.clone(), chain_account(), USD, 6)).await;
    assert!(err.is_err());
    drop(tx); // rolled back
    for table in ["journal_entries", "postings", "balances"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await.expect("count");
        assert_eq!(n, 0, "{table} not empty");
    }
}

#[sqlx::test]
async fn database_refuses_update_delete_and_truncate_of_ledger_rows(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    ledger.post_now(&transfer("k", chain_account(), AccountCode::merchant("m"), USD, 7)).await.expect("post");
    for sql in [
        "UPDATE postings SET amount = amount * 2",
        "DELETE FROM postings",
        "UPDATE journal_entries SET memo = 'x'",
        "DELETE FROM journal_entries",
        "TRUNCATE postings CASCADE",
        "UPDATE accounts SET non_negative = false",
        "UPDATE balances SET balance = 0",
        "DELETE FROM balances",
        "INSERT INTO balances (account_id, asset, shard, balance, non_negative) SELECT id, 'x', 0, 1, false FROM accounts LIMIT 1",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        assert!(matches!(code.as_deref(), Some("PRL01" | "PRL03")), "{sql}: {err}");
    }
}

#[sqlx::test]
async fn database_refuses_an_unbalanced_entry_written_by_hand(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let mut conn = pool.acquire().await.expect("conn");
    let a = ledger.account_id(&mut conn, &chain_account(), true).await.expect("account");
    let b = ledger.account_id(&mut conn, &AccountCode::platform_fees(), true).await.expect("account");
    drop(conn);
    let mut tx = pool.begin().await.expect("begin");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO journal_entries (idempotency_key, fingerprint, kind) VALUES ('raw', decode(repeat('00', 32), 'hex'), 'raw') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("entry");
    sqlx::query("INSERT INTO postings (entry_id, account_id, asset, amount) VALUES ($1, $2, 'iso4217:USD', 10), ($1, $3, 'iso4217:USD', -9)")
        .bind(id)
        .bind(a)
        .bind(b)
        .execute(&mut *tx)
        .await
        .expect("insert is checked at commit");
    let err = tx.commit().await.expect_err("unbalanced entry refused at commit");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL02"), "{err}");

    // An entry with no postings is refused as well.
    let err = sqlx::query(
        "INSERT INTO journal_entries (idempotency_key, fingerprint, kind) VALUES ('empty', decode(repeat('00', 32), 'hex'), 'raw')",
    )
    .execute(&pool)
    .await
    .expect_err("entry without postings refused");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL02"), "{err}");
}

#[sqlx::test]
async fn postings_cannot_be_added_to_a_committed_entry(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let posted = ledger.post_now(&transfer("k", chain_account(), AccountCode::platform_fees(), USD, 7)).await.expect("post");
    let mut conn = pool.acquire().await.expect("conn");
    let a = ledger.account_id(&mut conn, &chain_account(), true).await.expect("account");
    let b = ledger.account_id(&mut conn, &AccountCode::platform_fees(), true).await.expect("account");
    drop(conn);
    // Even a balanced pair is refused: a committed entry is closed (it was created by another
    // transaction), also when the posting claims that transaction's id as its own.
    let err = sqlx::query("INSERT INTO postings (entry_id, account_id, asset, amount) VALUES ($1, $2, 'iso4217:USD', 1), ($1, $3, 'iso4217:USD', -1)")
        .bind(posted.entry_id)
        .bind(a)
        .bind(b)
        .execute(&pool)
        .await
        .expect_err("closed entry");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL01"), "{err}");
    let err = sqlx::query(
        "INSERT INTO postings (entry_id, entry_tx, account_id, asset, amount) \
         SELECT $1, tx, $2, 'iso4217:USD', 1 FROM journal_entries WHERE id = $1 \
         UNION ALL SELECT $1, tx, $3, 'iso4217:USD', -1 FROM journal_entries WHERE id = $1",
    )
    .bind(posted.entry_id)
    .bind(a)
    .bind(b)
    .execute(&pool)
    .await
    .expect_err("closed entry, its transaction id forged");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL01"), "{err}");
    let err = sqlx::query("INSERT INTO postings (entry_id, account_id, asset, amount) VALUES (-1, $1, 'iso4217:USD', 1), (-1, $2, 'iso4217:USD', -1)")
        .bind(a)
        .bind(b)
        .execute(&pool)
        .await
        .expect_err("unknown entry");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL01"), "{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM postings").fetch_one(&pool).await.expect("count");
    assert_eq!(n, 2, "only the first entry's postings");

    // Within one transaction, a posting after the entries were checked is refused too.
    let mut tx = pool.begin().await.expect("begin");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO journal_entries (idempotency_key, fingerprint, kind) VALUES ('late', decode(repeat('00', 32), 'hex'), 'raw') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("entry");
    sqlx::query("INSERT INTO postings (entry_id, account_id, asset, amount) VALUES ($1, $2, 'iso4217:USD', 1), ($1, $3, 'iso4217:USD', -1)")
        .bind(id)
        .bind(a)
        .bind(b)
        .execute(&mut *tx)
        .await
        .expect("balanced postings");
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE").execute(&mut *tx).await.expect("entry checked now");
    let err = sqlx::query("INSERT INTO postings (entry_id, account_id, asset, amount) VALUES ($1, $2, 'iso4217:USD', 5)")
        .bind(id)
        .bind(a)
        .execute(&mut *tx)
        .await
        .expect_err("posting after the check");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL01"), "{err}");
}

/// Balance rows move by each account's net over the statement: a guarded account drawn down
/// beside other accounts' credits, and a guarded account debited and credited by one entry, whose
/// net is what must stay non-negative. A posting to an account that does not exist is refused.
#[sqlx::test]
async fn balances_move_by_each_accounts_net_and_unknown_accounts_are_refused(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let a = AccountCode::merchant("mer_a");
    let b = AccountCode::merchant("mer_b");
    ledger.post_now(&transfer("fund", chain_account(), a.clone(), USD, 10)).await.expect("fund");
    // a pays 4 out of 10: drawn down beside b's and the fees' credits, in one statement.
    let split = NewEntry::new("split", "test")
        .debit(a.clone(), USD, amount(4))
        .credit(b.clone(), USD, amount(3))
        .credit(AccountCode::platform_fees(), USD, amount(1));
    ledger.post_now(&split).await.expect("split");
    // a is debited 9 and credited 5 by one entry: its net, -4, leaves it at 2 (6 before).
    let churn = NewEntry::new("churn", "test")
        .debit(a.clone(), USD, amount(9))
        .credit(a.clone(), USD, amount(5))
        .credit(b.clone(), USD, amount(4));
    ledger.post_now(&churn).await.expect("churn");
    // The same with a net of -3 from 2 would go negative: refused, nothing written.
    let over = NewEntry::new("over", "test")
        .debit(a.clone(), USD, amount(8))
        .credit(a.clone(), USD, amount(5))
        .credit(b.clone(), USD, amount(3));
    let err = ledger.post_now(&over).await.expect_err("overdraft by net");
    assert!(matches!(err, LedgerError::InsufficientBalance { .. }), "{err:?}");
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(ledger.balance(&mut conn, &a, USD).await.expect("a"), SignedAmount::positive(amount(2)));
    assert_eq!(ledger.balance(&mut conn, &b, USD).await.expect("b"), SignedAmount::positive(amount(7)));
    assert_eq!(
        ledger.balance(&mut conn, &AccountCode::platform_fees(), USD).await.expect("fees"),
        SignedAmount::positive(amount(1))
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("count");
    assert_eq!(rows, 3);

    let known = ledger.account_id(&mut conn, &chain_account(), true).await.expect("account");
    let mut tx = pool.begin().await.expect("begin");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO journal_entries (idempotency_key, fingerprint, kind) VALUES ('ghost', decode(repeat('00', 32), 'hex'), 'raw') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("entry");
    let err = sqlx::query("INSERT INTO postings (entry_id, account_id, asset, amount) VALUES ($1, $2, 'iso4217:USD', 1), ($1, -7, 'iso4217:USD', -1)")
        .bind(id)
        .bind(known)
        .execute(&mut *tx)
        .await
        .expect_err("unknown account");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("PRL05"), "{err}");
}

#[sqlx::test]
async fn reversal_restores_balances_and_happens_once(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let merchant = AccountCode::merchant("mer_r");
    let posted = ledger.post_now(&transfer("orig", chain_account(), merchant.clone(), USD, 900)).await.expect("post");
    let mut conn = pool.acquire().await.expect("conn");
    let reversal = ledger.reverse(&mut conn, posted.entry_id, "rev-1", "correction").await.expect("reverse");
    assert!(reversal.created);
    assert_eq!(ledger.balance(&mut conn, &merchant, USD).await.expect("balance"), SignedAmount::ZERO);
    assert_eq!(ledger.balance(&mut conn, &chain_account(), USD).await.expect("balance"), SignedAmount::ZERO);
    let again = ledger.reverse(&mut conn, posted.entry_id, "rev-1", "correction").await.expect("same key replays");
    assert_eq!(again.entry_id, reversal.entry_id);
    let err = ledger.reverse(&mut conn, posted.entry_id, "rev-2", "again").await.expect_err("second reversal");
    assert!(matches!(err, LedgerError::AlreadyReversed { .. }), "{err:?}");
    let entry = ledger.entry(&mut conn, reversal.entry_id).await.expect("entry");
    assert_eq!(entry.reverses_entry_id, Some(posted.entry_id));
}

#[sqlx::test]
async fn huge_amounts_round_trip_exactly(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let big = payrail::money::Amount::MAX;
    let entry = NewEntry::new("big", "test")
        .debit(chain_account(), "eip155:1/slip44:60", big)
        .credit(AccountCode::merchant("m"), "eip155:1/slip44:60", big);
    let posted = ledger.post_now(&entry).await.expect("post");
    let mut conn = pool.acquire().await.expect("conn");
    let read = ledger.entry(&mut conn, posted.entry_id).await.expect("entry");
    assert!(read.postings.iter().all(|p| p.amount == big));
}

/// Many tasks post between many accounts at once (including a shared hot account); afterwards every
/// balance equals the sum of its postings and the books balance.
#[sqlx::test]
async fn concurrent_posters_keep_balances_equal_to_postings(pool: PgPool) {
    // A pool of our own: sixteen writers need sixteen connections.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(120))
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("pool");
    let ledger = Arc::new(Ledger::new(pool.clone()));
    let tasks = 16;
    let per_task = 40;
    let merchants: Vec<AccountCode> = (0..8).map(|i| AccountCode::merchant(&format!("mer_{i}"))).collect();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let ledger = ledger.clone();
        let merchants = merchants.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let a = &merchants[(t + i) % merchants.len()];
                let b = &merchants[(t * 3 + i + 1) % merchants.len()];
                let credit = transfer(&format!("c-{t}-{i}"), chain_account(), a.clone(), USD, 10 + i as u64);
                ledger.post_now(&credit).await.expect("credit");
                // A four-posting entry: a fee to the hot platform account and a move between two
                // merchants, in an order that differs per task; b is credited twice, which must
                // move one of its balance rows, not two in an order another writer may reverse.
                let fee = NewEntry::new(format!("f-{t}-{i}"), "test")
                    .debit(a.clone(), USD, amount(3))
                    .credit(AccountCode::platform_fees(), USD, amount(1))
                    .credit(b.clone(), USD, amount(1))
                    .credit(b.clone(), USD, amount(1));
                ledger.post_now(&fee).await.expect("fee");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let rows = sqlx::query(
        "SELECT a.code, p.asset, CASE WHEN a.normal_side = 'debit' THEN sum(p.amount) ELSE -sum(p.amount) END::text AS from_postings, \
                (SELECT sum(balance) FROM balances b WHERE b.account_id = a.id AND b.asset = p.asset)::text AS from_balances \
         FROM postings p JOIN accounts a ON a.id = p.account_id GROUP BY a.id, a.code, a.normal_side, p.asset",
    )
    .fetch_all(&pool)
    .await
    .expect("compare");
    assert_eq!(rows.len(), merchants.len() + 2);
    for row in rows {
        let code: String = row.get("code");
        let a: String = row.get("from_postings");
        let b: String = row.get("from_balances");
        assert_eq!(a, b, "{code}");
    }
    let fees: String = sqlx::query_scalar("SELECT sum(balance)::text FROM balances b JOIN accounts a ON a.id = b.account_id WHERE a.code = 'revenue:platform_fees'")
        .fetch_one(&pool)
        .await
        .expect("fees");
    assert_eq!(fees, (tasks * per_task).to_string());
    let total: Option<String> = sqlx::query_scalar("SELECT sum(amount)::text FROM postings").fetch_one(&pool).await.expect("sum");
    assert_eq!(total.as_deref(), Some("0"));
}

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Op {
        from: usize,
        to: usize,
        value: u64,
        replay: bool,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            (0usize..5, 0usize..5, 1u64..1_000, prop::bool::weighted(0.2))
                .prop_map(|(from, to, value, replay)| Op { from, to, value, replay }),
            1..40,
        )
    }

    fn account(i: usize) -> AccountCode {
        match i {
            0 => chain_account(),
            1 => AccountCode::platform_fees(),
            n => AccountCode::merchant(&format!("mer_p{n}")),
        }
    }

    /// Runs a random sequence of entries against a fresh database and checks it against a model:
    /// guarded accounts are refused exactly when the model says they would go negative, replays
    /// change nothing, and every balance equals the model.
    async fn run(pool: PgPool, ops: Vec<Op>) {
        let ledger = Ledger::new(pool.clone());
        let mut model: HashMap<usize, i128> = HashMap::new();
        let mut posted: Vec<(String, usize, usize, u64)> = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let (key, from, to, value) = match (op.replay, posted.last()) {
                (true, Some(last)) => last.clone(),
                _ => (format!("op-{n}"), op.from, op.to, op.value),
            };
            if from == to {
                continue;
            }
            let result = ledger.post_now(&transfer(&key, account(from), account(to), USD, value)).await;
            let already = posted.iter().any(|p| p.0 == key);
            // Debit-normal accounts grow with a debit, credit-normal ones shrink.
            let sign = |i: usize| if account(i).account_type().is_debit_normal() { 1i128 } else { -1 };
            let after_from = model.get(&from).copied().unwrap_or(0) + sign(from) * i128::from(value);
            let after_to = model.get(&to).copied().unwrap_or(0) - sign(to) * i128::from(value);
            let refused = (account(from).is_non_negative() && after_from < 0)
                || (account(to).is_non_negative() && after_to < 0);
            match result {
                Ok(p) if already => assert!(!p.created, "replay of {key} created an entry"),
                Ok(_) => {
                    assert!(!refused, "{key} should have been refused");
                    model.insert(from, after_from);
                    model.insert(to, after_to);
                    posted.push((key, from, to, value));
                }
                Err(LedgerError::InsufficientBalance { .. }) => assert!(refused, "{key} refused wrongly"),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        let mut conn = pool.acquire().await.expect("conn");
        for i in 0..5 {
            let got = ledger.balance(&mut conn, &account(i), USD).await.expect("balance");
            let want = model.get(&i).copied().unwrap_or(0);
            let magnitude = payrail::money::Amount::from_u128(want.unsigned_abs());
            let want = if want < 0 { SignedAmount::negative(magnitude) } else { SignedAmount::positive(magnitude) };
            assert_eq!(got, want, "account {i}");
        }
        let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("n");
        assert_eq!(usize::try_from(entries).expect("count"), posted.len());
    }

    /// Each case runs in a database of its own, created from `DATABASE_URL` and dropped after.
    #[test]
    fn random_entry_sequences_match_the_model() {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a PostgreSQL server");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let admin_options: sqlx::postgres::PgConnectOptions = url.parse().expect("DATABASE_URL");
        let admin = runtime.block_on(PgPool::connect_with(admin_options.clone())).expect("admin pool");
        let case = std::sync::atomic::AtomicUsize::new(0);
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
        let result = runner.run(&ops(), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            runtime.block_on(async {
                let db = format!("payrail_prop_{}_{n}", std::process::id());
                sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.expect("create db");
                let case_pool = PgPool::connect_with(admin_options.clone().database(&db)).await.expect("case pool");
                payrail::db::migrate(&case_pool).await.expect("migrate");
                let outcome = tokio::spawn(run(case_pool.clone(), ops)).await;
                case_pool.close().await;
                sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.expect("drop db");
                if let Err(panic) = outcome {
                    std::panic::resume_unwind(panic.into_panic());
                }
            });
            Ok(())
        });
        result.expect("property holds");
    }
}

/// Several entries in one statement: each is posted as `post` posts it (its own id, its postings,
/// balances moved by all of them), an entry already posted is returned as standing, another entry
/// under a key already used is refused, and so is one key twice in the same call; a refused call
/// leaves nothing.
#[sqlx::test]
async fn many_entries_post_in_one_statement_each_exactly_once(pool: PgPool) {
    let ledger = Ledger::new(pool.clone());
    let (a, b) = (AccountCode::merchant("mer_a"), AccountCode::merchant("mer_b"));
    let earlier = transfer("m0", chain_account(), a.clone(), USD, 5);
    ledger.post_now(&earlier).await.expect("earlier");
    let one = transfer("m1", chain_account(), a.clone(), USD, 100);
    let two = transfer("m2", chain_account(), b.clone(), USD, 250);
    let three = transfer("m3", chain_account(), a.clone(), USD, 7);
    let mut tx = pool.begin().await.expect("begin");
    let posted = ledger.post_many(&mut tx, &[&one, &earlier, &two, &three]).await.expect("posted");
    tx.commit().await.expect("commit");
    assert_eq!(posted.iter().map(|p| p.created).collect::<Vec<_>>(), [true, false, true, true]);
    let mut conn = pool.acquire().await.expect("conn");
    for (posted, key, postings) in [(posted[0], "m1", 2), (posted[2], "m2", 2), (posted[3], "m3", 2)] {
        let entry = ledger.entry(&mut conn, posted.entry_id).await.expect("entry");
        assert_eq!((entry.idempotency_key.as_str(), entry.postings.len()), (key, postings));
    }
    assert_eq!(ledger.balance(&mut conn, &a, USD).await.expect("a"), SignedAmount::positive(amount(112)));
    assert_eq!(ledger.balance(&mut conn, &b, USD).await.expect("b"), SignedAmount::positive(amount(250)));
    assert_eq!(ledger.balance(&mut conn, &chain_account(), USD).await.expect("chain"), SignedAmount::positive(amount(362)));

    let count = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("count")
    };
    let before = count(pool.clone()).await;
    let changed = transfer("m2", chain_account(), b.clone(), USD, 251);
    let fresh = transfer("m4", chain_account(), b.clone(), USD, 1);
    let mut tx = pool.begin().await.expect("begin");
    let refused = ledger.post_many(&mut tx, &[&fresh, &changed]).await;
    assert!(matches!(refused, Err(LedgerError::IdempotencyConflict { ref key }) if key == "m2"), "{refused:?}");
    drop(tx);
    let mut tx = pool.begin().await.expect("begin");
    let twice = ledger.post_many(&mut tx, &[&fresh, &fresh]).await;
    assert!(matches!(twice, Err(LedgerError::IdempotencyConflict { ref key }) if key == "m4"), "{twice:?}");
    drop(tx);
    assert_eq!(count(pool.clone()).await, before);
    assert_eq!(ledger.balance(&mut conn, &b, USD).await.expect("b"), SignedAmount::positive(amount(250)));
}
