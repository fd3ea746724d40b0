//! sqlx-ledger (a double-entry ledger crate on sqlx and PostgreSQL) driven the way `cargo bench
//! --bench ledger` drives payrail's ledger: that benchmark's second peer. `scripts/bench` builds
//! this binary when `SQLX_LEDGER_DIR` names a checkout of sqlx-ledger and hands it to the benchmark
//! as `SQLX_LEDGER_PEER`.
//!
//! ```text
//! payrail-bench-sqlx-ledger setup <database url> <sqlx-ledger's migration, .up.sql>
//! payrail-bench-sqlx-ledger run <database url> <postings: 2|4> <writers> <hot|spread> <warm-up s> <seconds>
//! ```
//!
//! `setup` loads sqlx-ledger's schema into the benchmark's database (its tables are prefixed
//! `sqlx_ledger_`) and creates one journal, the accounts (the chain's, the platform fees', two hot
//! merchants and 1,000 others) and two transaction templates: the same payment as the benchmark's,
//! two postings (the chain's assets grow, a merchant is owed it) or four (10 in; 7, a fee of 1 and 2
//! to a second merchant out) — and posts one payment to every account, so that every balance row
//! exists before measuring. `run` posts payments from `writers` tasks, each transaction through
//! `post_transaction`, for the warm-up and then the measured window, and prints `entries <n>
//! micros <µs> retries <n>`: the transactions committed inside the window, and how many tries
//! failed and were made again over the whole run (see [`ATTEMPTS_MAX`]). sqlx-ledger keeps one balance row
//! per account and currency, so `hot` stands for both of the benchmark's hot scenarios.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use sqlx_ledger::account::NewAccount;
use sqlx_ledger::journal::NewJournal;
use sqlx_ledger::tx_template::{EntryInput, NewTxTemplate, ParamDataType, ParamDefinition, TxInput, TxParams};
use sqlx_ledger::{AccountId, JournalId, SqlxLedger, TransactionId};
use uuid::Uuid;

const JOURNAL: u128 = 1;
const CHAIN: u128 = 2;
const FEES: u128 = 3;
const HOT: [u128; 2] = [10, 11];
const MERCHANTS: u128 = 1_000;
const FIRST_MERCHANT: u128 = 1_000;
/// A failed transaction is tried again. Writers that share an account fail often: sqlx-ledger reads
/// an account's balance with `FOR UPDATE` inside a join whose other side is read from the
/// statement's snapshot, so a writer that waited on the lock finds no balance, inserts one, and
/// fails on its unique key; every payment shares the chain's account. Each retry is counted.
const ATTEMPTS_MAX: u32 = 1_000;

fn account(n: u128) -> AccountId {
    AccountId::from(Uuid::from_u128(n))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["setup", url, migration] => setup(url, migration).await,
        ["run", url, postings, writers, accounts, warmup, seconds] => {
            let hot = match *accounts {
                "hot" => true,
                "spread" => false,
                other => bail!("accounts must be hot or spread, not {other}"),
            };
            let (entries, micros, retries) = run(url, postings.parse()?, writers.parse()?, hot, warmup.parse()?, seconds.parse()?).await?;
            println!("entries {entries} micros {micros} retries {retries}");
            Ok(())
        }
        _ => bail!("usage: setup <url> <migration.up.sql> | run <url> <postings> <writers> <hot|spread> <warm-up s> <seconds>"),
    }
}

async fn setup(url: &str, migration: &str) -> Result<()> {
    let pool = PgPool::connect(url).await?;
    let sql = std::fs::read_to_string(migration).with_context(|| format!("cannot read {migration}"))?;
    sqlx::raw_sql(&sql).execute(&pool).await.context("cannot load sqlx-ledger's schema")?;
    let ledger = SqlxLedger::new(&pool);
    ledger
        .journals()
        .create(NewJournal::builder().id(JournalId::from(Uuid::from_u128(JOURNAL))).name("bench").build()?)
        .await?;
    let accounts = [CHAIN, FEES].into_iter().chain(HOT).chain(FIRST_MERCHANT..FIRST_MERCHANT + MERCHANTS);
    for n in accounts {
        let code = format!("acct-{n}");
        ledger.accounts().create(NewAccount::builder().id(account(n)).code(code.clone()).name(code).build()?).await?;
    }
    let entry = |kind: &str, who: &str, direction: &str, units: &str| {
        EntryInput::builder()
            .entry_type(format!("'{kind}'"))
            .account_id(format!("params.{who}"))
            .layer("SETTLED")
            .direction(direction)
            .units(format!("params.{units}"))
            .currency("'USD'")
            .build()
    };
    let param = |name: &str, kind: ParamDataType| ParamDefinition::builder().name(name).r#type(kind).build();
    let tx_input = || TxInput::builder().effective("date()").journal_id(format!("uuid('{}')", Uuid::from_u128(JOURNAL))).build();
    let two = NewTxTemplate::builder()
        .id(Uuid::new_v4())
        .code("PAY2")
        .params(vec![param("chain", ParamDataType::UUID)?, param("first", ParamDataType::UUID)?, param("total", ParamDataType::DECIMAL)?])
        .tx_input(tx_input()?)
        .entries(vec![entry("PAY_DR", "chain", "DEBIT", "total")?, entry("PAY_CR", "first", "CREDIT", "total")?])
        .build()?;
    ledger.tx_templates().create(two).await?;
    let four = NewTxTemplate::builder()
        .id(Uuid::new_v4())
        .code("PAY4")
        .params(vec![
            param("chain", ParamDataType::UUID)?,
            param("first", ParamDataType::UUID)?,
            param("fees", ParamDataType::UUID)?,
            param("second", ParamDataType::UUID)?,
            param("total", ParamDataType::DECIMAL)?,
            param("share", ParamDataType::DECIMAL)?,
            param("fee", ParamDataType::DECIMAL)?,
            param("rest", ParamDataType::DECIMAL)?,
        ])
        .tx_input(tx_input()?)
        .entries(vec![
            entry("PAY_DR", "chain", "DEBIT", "total")?,
            entry("PAY_CR", "first", "CREDIT", "share")?,
            entry("FEE_CR", "fees", "CREDIT", "fee")?,
            entry("SPLIT_CR", "second", "CREDIT", "rest")?,
        ])
        .build()?;
    ledger.tx_templates().create(four).await?;
    // Every account's balance row exists before measuring, as in the benchmark's other runs: the
    // steady state is measured, not first-use inserts (which concurrent writers would race on).
    for n in [FEES].into_iter().chain(HOT).chain(FIRST_MERCHANT..FIRST_MERCHANT + MERCHANTS) {
        let (template, mut params) = payment(2, (n, n));
        params.insert("first", account(n));
        ledger.post_transaction(TransactionId::new(), template, Some(params)).await.context("funding an account")?;
    }
    pool.close().await;
    Ok(())
}

/// The two merchants of one payment, picked as the benchmark picks them.
fn merchants(hot: bool, rng: &mut StdRng) -> (u128, u128) {
    if hot {
        return (HOT[0], HOT[1]);
    }
    let a = rng.gen_range(0..MERCHANTS);
    let b = (a + rng.gen_range(1..MERCHANTS)) % MERCHANTS;
    (FIRST_MERCHANT + a, FIRST_MERCHANT + b)
}

/// The template and parameters of one payment to `first` (and `second`, with four postings).
fn payment(postings: u32, (first, second): (u128, u128)) -> (&'static str, TxParams) {
    let mut params = TxParams::new();
    params.insert("chain", account(CHAIN));
    params.insert("first", account(first));
    params.insert("total", Decimal::from(10));
    if postings == 2 {
        return ("PAY2", params);
    }
    params.insert("fees", account(FEES));
    params.insert("second", account(second));
    params.insert("share", Decimal::from(7));
    params.insert("fee", Decimal::from(1));
    params.insert("rest", Decimal::from(2));
    ("PAY4", params)
}

async fn run(url: &str, postings: u32, writers: u32, hot: bool, warmup: u64, seconds: u64) -> Result<(u64, u64, u64)> {
    if postings != 2 && postings != 4 {
        bail!("postings must be 2 or 4");
    }
    let pool = PgPoolOptions::new().max_connections(writers + 1).connect(url).await?;
    let ledger = Arc::new(SqlxLedger::new(&pool));
    let committed = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (ledger, committed, retries, stop) = (ledger.clone(), committed.clone(), retries.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15 ^ u64::from(writer));
            while !stop.load(Ordering::Relaxed) {
                let to = merchants(hot, &mut rng);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let (template, params) = payment(postings, to);
                    match ledger.post_transaction(TransactionId::new(), template, Some(params)).await {
                        Ok(()) => break,
                        Err(_) if attempt < ATTEMPTS_MAX => {
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(anyhow::Error::new(e).context("posting a payment")),
                    }
                }
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let before = committed.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let entries = committed.load(Ordering::Relaxed) - before;
    let micros = u64::try_from(started.elapsed().as_micros())?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    pool.close().await;
    Ok((entries, micros, retries.load(Ordering::Relaxed)))
}
