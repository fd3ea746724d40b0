//! Credit spends per second against the ledger's own ceiling for the same entries.
//!
//! What is measured: committed spends through [`payrail::credits::movement::spend`], the path
//! `POST /v1/customers/{id}/spend` takes after authentication — the customer's row locked, its
//! lots read with their balances, the spending order planned, the split (70 % to a creator), one
//! ledger entry (a lot debited; creator, platform and merchant credited), the history row and the
//! webhook event, in one transaction.
//!
//! Scenarios: 16 concurrent writers spending from one hot customer (every spend waits for the
//! previous one's commit: movements of a customer are serialised on its row), and from customers
//! picked at random among 10,000. The ceiling for each: the same writers posting the same ledger
//! entry shape directly ([`Ledger::post_now`]: one lot debited, three accounts credited) on the
//! same lots, right after the scenario — what separates the two is what credits add on top of the
//! ledger (the lock, the lot read, the plan, the history and the event).
//!
//! Each run lasts `BENCH_SECONDS` (default 5) after `BENCH_WARMUP_SECONDS` (default 1) of warm-up,
//! in a fresh database `payrail_bench_credits_<pid>` on `DATABASE_URL`, dropped at the end. After
//! the runs, every customer's balance is checked: what was granted less what was spent.
//!
//! Run with `cargo bench --bench credits`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use payrail::credits::movement::{self, GrantRequest, SpendRequest};
use payrail::ledger::{AccountCode, Ledger, NewEntry};
use payrail::money::Amount;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

const CUSTOMERS: usize = 10_000;
const WRITERS: usize = 16;
/// Coins granted to each customer: more than any run spends.
const GRANT: u64 = 1_000_000_000;

fn main() -> Result<()> {
    support::in_fresh_database("payrail_bench_credits", run)
}

struct Shop {
    pool: PgPool,
    ledger: Arc<Ledger>,
    merchant_id: String,
    creator_id: String,
    asset: String,
    customers: Vec<String>,
}

async fn run(options: PgConnectOptions) -> Result<()> {
    let seconds = support::env_u64("BENCH_SECONDS", 5)?;
    let warmup = support::env_u64("BENCH_WARMUP_SECONDS", 1)?;
    let pool = PgPoolOptions::new().max_connections(u32::try_from(WRITERS + 2)?).connect_with(options).await?;
    payrail::db::migrate(&pool).await.context("migrations failed")?;
    let shop = Arc::new(prepare(pool).await?);
    println!("payrail credits benchmark: {WRITERS} writers, {seconds} s per run after {warmup} s warm-up, {CUSTOMERS} customers");
    println!("{:<28} {:>12} {:>16} {:>8}", "scenario", "spends/s", "ledger ceiling/s", "share");
    let mut spent_total = 0u64;
    let mut rows = Vec::new();
    for (name, hot) in [("one hot customer", true), ("10,000 customers", false)] {
        let (spends, spent) = measure(&shop, hot, seconds, warmup, Mode::Spend).await?;
        spent_total += spent;
        let (ceiling, posted) = measure(&shop, hot, seconds, warmup, Mode::Ceiling).await?;
        spent_total += posted;
        println!("{name:<28} {spends:>12} {ceiling:>16} {:>7}%", spends * 100 / ceiling.max(1));
        rows.push((name, spends, ceiling));
    }
    check(&shop, spent_total).await?;
    support::summary_header();
    for (name, spends, ceiling) in rows {
        support::summary_row(
            &format!("credit spends, {name}"),
            &format!("{spends}/s"),
            &format!("ledger entries {ceiling}/s"),
            &format!("{}%", spends * 100 / ceiling.max(1)),
            "-",
        );
    }
    Ok(())
}

/// A merchant with coins, a creator, and customers each granted [`GRANT`] coins.
async fn prepare(pool: PgPool) -> Result<Shop> {
    let ledger = Arc::new(Ledger::new(pool.clone()));
    let now = Utc::now();
    let merchant = payrail::merchant::create_merchant(&pool, "Bench").await?;
    let currency: payrail::credits::currency::CreateCurrency =
        serde_json::from_value(serde_json::json!({ "code": "coins", "name": "Coins", "peg": "0.01", "peg_currency": "USD" }))?;
    let asset = payrail::credits::currency::create(&pool, &merchant.merchant_id, &currency, now).await?.asset;
    let creator = payrail::creator::create_creator(&pool, &merchant.merchant_id, &payrail::creator::CreateCreator { name: "Writer".to_owned(), payout_addresses: Default::default() })
        .await?
        .creator
        .id;
    let customers: Vec<String> = sqlx::query_scalar(
        "INSERT INTO customers (id, merchant_id, external_id, created_at, updated_at) \
         SELECT 'cus_bench' || lpad(n::text, 12, '0'), $1, 'user-' || n, now(), now() FROM generate_series(1, $2) n RETURNING id",
    )
    .bind(&merchant.merchant_id)
    .bind(i64::try_from(CUSTOMERS)?)
    .fetch_all(&pool)
    .await?;
    let shop = Shop { pool, ledger, merchant_id: merchant.merchant_id, creator_id: creator, asset, customers };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let shop = Arc::new(shop);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (shop, next) = (shop.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed))?;
                    let Some(customer) = shop.customers.get(i) else { return Ok::<_, anyhow::Error>(()) };
                    let grant = GrantRequest { currency: "coins".to_owned(), amount_minor: GRANT.to_string(), source: Some("bonus".to_owned()), expires_at: None, description: None };
                    movement::grant(&shop.pool, &shop.ledger, &shop.merchant_id, customer, &grant, &format!("grant-{i}"), Utc::now()).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    println!("setup: {CUSTOMERS} customers granted in {} ms", started.elapsed().as_millis());
    Arc::try_unwrap(shop).map_err(|_| anyhow::anyhow!("shop still shared"))
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Spend,
    Ceiling,
}

/// Runs `WRITERS` tasks for the warm-up and the window; returns what committed in the window per
/// second, and how many coins the spends took in all (warm-up included).
async fn measure(shop: &Arc<Shop>, hot: bool, seconds: u64, warmup: u64, mode: Mode) -> Result<(u64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    let spent = Arc::new(AtomicU64::new(0));
    let lots: Vec<String> = if mode == Mode::Ceiling {
        sqlx::query_scalar("SELECT id FROM credit_lots ORDER BY seq").fetch_all(&shop.pool).await?
    } else {
        Vec::new()
    };
    let lots = Arc::new(lots);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (shop, stop, counting, counted, spent, lots) = (shop.clone(), stop.clone(), counting.clone(), counted.clone(), spent.clone(), lots.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = if hot { 0 } else { rng.gen_range(0..shop.customers.len()) };
                    n += 1;
                    let key = format!("{}-{w}-{n}-{}", if mode == Mode::Spend { "spend" } else { "plain" }, rng.r#gen::<u64>());
                    match mode {
                        Mode::Spend => {
                            let request = SpendRequest {
                                currency: "coins".to_owned(),
                                amount_minor: "10".to_owned(),
                                description: None,
                                resource: Some("chapter/1".to_owned()),
                                splits: Some(vec![payrail::invoice::CreatorShare { creator: shop.creator_id.clone(), bps: 7000 }]),
                                platform_fee_bps: Some(500),
                            };
                            movement::spend(&shop.pool, &shop.ledger, &shop.merchant_id, &shop.customers[i], &request, &key, Utc::now()).await?;
                            spent.fetch_add(10, Ordering::Relaxed);
                        }
                        Mode::Ceiling => {
                            let entry = NewEntry::new(key, "credit_spend")
                                .debit(AccountCode::credit_lot(&lots[i]), shop.asset.as_str(), Amount::from_u64(10))
                                .credit(AccountCode::creator(&shop.creator_id), shop.asset.as_str(), Amount::from_u64(7))
                                .credit(AccountCode::platform_fees(), shop.asset.as_str(), Amount::from_u64(0))
                                .credit(AccountCode::credits_revenue(&shop.merchant_id), shop.asset.as_str(), Amount::from_u64(3));
                            let mut entry = entry;
                            entry.postings.retain(|p| !p.amount.is_zero());
                            shop.ledger.post_now(&entry).await?;
                            // The ceiling's coins leave the lots too: counted for the final check.
                            spent.fetch_add(10, Ordering::Relaxed);
                        }
                    }
                    if counting.load(Ordering::Relaxed) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let rate = counted.load(Ordering::Relaxed) * 1_000_000 / u64::try_from(elapsed.as_micros()).unwrap_or(1).max(1);
    Ok((rate, spent.load(Ordering::Relaxed)))
}

/// Every coin granted is either still on a lot or was spent: nothing made or lost.
async fn check(shop: &Shop, spent: u64) -> Result<()> {
    let left: String = sqlx::query_scalar(
        "SELECT coalesce(sum(b.balance), 0)::text FROM balances b JOIN accounts a ON a.id = b.account_id \
         WHERE a.code LIKE 'liabilities:credit\\_lot:%' AND b.asset = $1",
    )
    .bind(&shop.asset)
    .fetch_one(&shop.pool)
    .await?;
    let granted = u128::from(GRANT) * u128::try_from(CUSTOMERS)?;
    let left: u128 = left.parse()?;
    anyhow::ensure!(left + u128::from(spent) == granted, "lots hold {left}, spent {spent}, granted {granted}");
    println!("check: every coin granted is on a lot or was spent ({spent} taken by spends and ceiling entries)");
    Ok(())
}
