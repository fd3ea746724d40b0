//! The bulk access check: how long `POST /v1/access/check` takes to answer 1,000 resources.
//!
//! What is measured: [`payrail::subscriptions::access::check`], the one query the route runs after
//! authentication — unlocks, the longest matching access rule and the customer's live
//! subscriptions' entitlements, for each of 1,000 resources — on one connection, one check after
//! another, for customers picked at random.
//!
//! The data: one merchant with 200 access rules (prefixes of three depths), 10 plans of 1 to 3
//! entitlements, 2,000 customers each subscribed to 1 or 2 plans and holding 250 unlocks (500,000
//! unlocks in all). Resources asked are drawn from the unlocked ones, ones under rules and ones
//! under none, so every branch of the rule answers.
//!
//! Goal: p99 ≤ 5 ms for 1,000 resources. `BENCH_CHECKS` (default 1,000) checks after
//! `BENCH_WARMUP_CHECKS` (default 100), in a fresh database `payrail_bench_access_<pid>` on
//! `DATABASE_URL`, dropped at the end. Every answer is checked for length and order.
//!
//! Run with `cargo bench --bench access`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use payrail::subscriptions::access;
use payrail::subscriptions::plan::{self, CreatePlan};
use payrail::subscriptions::subscription::{self, Subscribe};
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

const CUSTOMERS: usize = 2_000;
const UNLOCKS_PER_CUSTOMER: usize = 250;
const RULES: usize = 200;
const PLANS: usize = 10;
const RESOURCES_PER_CHECK: usize = 1_000;
const GOAL_P99_US: u128 = 5_000;

fn main() -> Result<()> {
    support::in_fresh_database("payrail_bench_access", run)
}

fn resource(story: usize, chapter: usize) -> String {
    format!("story/{story}/chapter/{chapter}")
}

async fn prepare(pool: &PgPool) -> Result<(String, Vec<String>)> {
    let now = Utc::now();
    let merchant = payrail::merchant::create_merchant(pool, "Bench").await?;
    let merchant_id = merchant.merchant_id;
    for n in 0..RULES {
        let prefix = match n % 3 {
            0 => format!("story/{n}/"),
            1 => format!("story/{}/chapter/1", n - 1),
            _ => format!("audio/{n}/"),
        };
        let rule = access::AccessRule { prefix, entitlements: vec![format!("tier:{}", n % 7)] };
        access::set_rule(pool, &merchant_id, &rule, now).await?;
    }
    let mut plans = Vec::with_capacity(PLANS);
    for n in 0..PLANS {
        let request = CreatePlan {
            name: format!("Tier {n}"),
            price: "4.99".to_owned(),
            currency: "USD".to_owned(),
            interval: "month".to_owned(),
            interval_count: None,
            credits_per_period: None,
            trial_days: Some(30),
            entitlements: Some((0..=(n % 3)).map(|k| format!("tier:{}", (n + k) % 7)).collect()),
            grace_days: None,
            entitlements_in_grace: None,
            renewal_lead_s: None,
            active: None,
        };
        plans.push(plan::create(pool, &merchant_id, &request, now).await?.id);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut customers = Vec::with_capacity(CUSTOMERS);
    for n in 0..CUSTOMERS {
        let request = payrail::credits::customer::CreateCustomer { external_id: format!("reader-{n}"), email: None, name: None, metadata: Default::default() };
        let customer = payrail::credits::customer::create(pool, &merchant_id, &request, now).await?.id;
        for _ in 0..rng.gen_range(1..=2) {
            let subscribe = Subscribe { plan: plans[rng.gen_range(0..PLANS)].clone(), promo_code: None, payment: None };
            subscription::subscribe(pool, &merchant_id, &customer, &subscribe, None, now).await?;
        }
        customers.push(customer);
    }
    // Unlocks in bulk: what is measured is reading them.
    sqlx::query(
        "INSERT INTO unlocks (customer_id, resource, merchant_id, currency, price_minor, txn_id, created_at) \
         SELECT c.id, 'story/' || (g % 400) || '/chapter/' || (g / 400), $1, 'coins', 10, 'ctx_bench', now() \
         FROM customers c CROSS JOIN generate_series(0, $2 - 1) AS g WHERE c.merchant_id = $1 \
         ON CONFLICT DO NOTHING",
    )
    .bind(&merchant_id)
    .bind(i64::try_from(UNLOCKS_PER_CUSTOMER)?)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok((merchant_id, customers))
}

async fn run(options: PgConnectOptions) -> Result<()> {
    let checks = support::env_u64("BENCH_CHECKS", 1_000)?;
    let warmup = support::env_u64("BENCH_WARMUP_CHECKS", 100)?;
    let pool = PgPoolOptions::new().max_connections(4).connect_with(options).await?;
    payrail::db::migrate(&pool).await.context("migrations failed")?;
    let started = Instant::now();
    let (merchant_id, customers) = prepare(&pool).await?;
    println!(
        "payrail access benchmark: {CUSTOMERS} customers, {} unlocks, {RULES} rules, {PLANS} plans; prepared in {:.1} s",
        CUSTOMERS * UNLOCKS_PER_CUSTOMER,
        started.elapsed().as_secs_f64()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut conn = pool.acquire().await?;
    let mut bulk = Vec::with_capacity(usize::try_from(checks)?);
    let mut single = Vec::with_capacity(usize::try_from(checks)?);
    for n in 0..(warmup + checks) {
        let customer = &customers[rng.gen_range(0..customers.len())];
        let resources: Vec<String> = (0..RESOURCES_PER_CHECK)
            .map(|_| match rng.gen_range(0..3) {
                0 => resource(rng.gen_range(0..400), rng.gen_range(0..2)),
                1 => resource(rng.gen_range(0..RULES), rng.gen_range(0..20)),
                _ => format!("post/{}", rng.gen_range(0..100_000)),
            })
            .collect();
        let at = Instant::now();
        let answer = access::check(&mut conn, &merchant_id, customer, &resources).await?;
        let took = at.elapsed();
        assert_eq!(answer.len(), resources.len());
        assert!(answer.iter().zip(&resources).all(|(a, r)| &a.resource == r), "answers in the order asked");
        let at = Instant::now();
        access::check(&mut conn, &merchant_id, customer, &resources[..1]).await?;
        let one = at.elapsed();
        if n >= warmup {
            bulk.push(took);
            single.push(one);
        }
    }
    let report = |name: &str, times: &mut Vec<Duration>| {
        times.sort();
        // The q-th per-mille, in microseconds.
        let pick = |per_mille: usize| times[(times.len() - 1) * per_mille / 1_000].as_micros();
        let ms = |us: u128| format!("{}.{:02}", us / 1_000, us % 1_000 / 10);
        println!("{name:<28} p50 {:>7} ms   p99 {:>7} ms   max {:>7} ms", ms(pick(500)), ms(pick(990)), ms(pick(1_000)));
        pick(990)
    };
    let p99 = report("1,000 resources per check", &mut bulk);
    let p99_one = report("1 resource per check", &mut single);
    println!("goal p99 ≤ {GOAL_P99_US} µs for 1,000 resources: {}", if p99 <= GOAL_P99_US { "met" } else { "not met" });
    let ms = |us: u128| support::ms(u64::try_from(us).unwrap_or(u64::MAX));
    support::summary_header();
    support::summary_row("access check, 1,000 resources, p99", &ms(p99), "-", "-", &format!("≤ {}", ms(GOAL_P99_US)));
    support::summary_row("access check, 1 resource, p99", &ms(p99_one), "-", "-", "-");
    Ok(())
}
