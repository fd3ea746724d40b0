//! The console's pages with 100,000 invoices: how long each takes to render.
//!
//! The data (in a fresh database `payrail_bench_console_<pid>`, dropped at the end): one merchant
//! with `BENCH_CONSOLE_INVOICES` invoices (default 100,000) created over the last 58 days — six in
//! ten paid (a confirmed payment each on Ethereum, Polygon or by card), the rest expired, open,
//! void — two outbox events per invoice, a webhook endpoint with a delivery per event of the last
//! 20,000 (one in forty failed), 200 finished reconciliation runs and 500 confirmed payouts, and a
//! second merchant with 10,000 invoices of its own. Then `ANALYZE`.
//!
//! What is measured: each page, requested over a real socket from the daemon's own router (the
//! shipped dev configuration) with a merchant's or a finance session's cookie (their keys' rate
//! raised so that no page is refused), one request after
//! another: `BENCH_CONSOLE_WARMUP` (default 3, at least 1) unmeasured, then `BENCH_CONSOLE_REQUESTS`
//! (default 30). The merchant overview's first request, which sums the past 30 days that later
//! ones find kept (`payrail::console::daily`), is reported on its own. The time is the client's, from sending the request to the last byte: it includes the
//! loopback round trip, so it is a little more than the server's. Every answer must be 200.
//!
//! Goal: every page ≤ 50 ms at the 95th percentile. Run with `cargo bench --bench console`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use payrail::ledger::{AccountCode, NewEntry};
use payrail::merchant::{create_merchant, create_platform_key, Role};
use payrail::money::Amount;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

const GOAL_P95_MS: u128 = 50;
const POOL_MAX: u32 = 16;

fn main() -> Result<()> {
    support::in_fresh_database("payrail_bench_console", run)
}

/// A session for `key` (its cookie value), as signing in would make one.
async fn session(pool: &PgPool, key: &str, name: &str) -> Result<String> {
    let key_id = payrail::merchant::split_token(key).context("key")?.0;
    let token = format!("{name}{}", "0".repeat(40));
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    sqlx::query(
        "INSERT INTO console_sessions (id, key_id, token_hash, csrf_token, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, repeat('c', 64), now(), now(), now() + interval '12 hours')",
    )
    .bind(payrail::ids::new_id("ses"))
    .bind(key_id)
    .bind(digest.as_slice())
    .execute(pool)
    .await?;
    Ok(token)
}

/// `count` invoices of `merchant` spread over the last 58 days; six in ten paid with a payment
/// booked by `entry`, two events each.
async fn seed(pool: &PgPool, merchant: &str, tag: &str, count: u64, entry: i64) -> Result<()> {
    let count = i64::try_from(count)?;
    let spacing_ms = 58 * 86_400_000 / count.max(1);
    sqlx::query(
        "INSERT INTO invoices (id, merchant_id, status, currency, amount_minor, underpayment_tolerance_bps, order_id, \
                               expires_at, created_at, updated_at, paid_at) \
         SELECT 'inv_' || $2 || lpad(g::text, 20, '0'), $1, \
                CASE WHEN g % 10 < 6 THEN 'paid' WHEN g % 10 < 8 THEN 'expired' WHEN g % 10 = 8 THEN 'open' ELSE 'void' END, \
                'USD', 1000 + g % 5000, 0, 'order-' || g, \
                t + interval '15 minutes', t, t, CASE WHEN g % 10 < 6 THEN t + interval '2 minutes' END \
           FROM generate_series(1, $3) g, LATERAL (SELECT now() - g * ($4 * interval '1 millisecond') AS t) x",
    )
    .bind(merchant)
    .bind(tag)
    .bind(count)
    .bind(spacing_ms)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO payments (id, merchant_id, invoice_id, chain, asset, tx_ref, amount_minor, value_minor, confirmations, \
                               confirmations_required, status, applied_to, ledger_entry_id, seen_at, confirmed_at, updated_at) \
         SELECT 'pay_' || $2 || lpad(g::text, 20, '0'), $1, i.id, c.chain, c.asset, $2 || ':' || g, i.amount_minor, i.amount_minor, \
                12, 3, 'confirmed', 'invoice', $3, i.paid_at, i.paid_at, i.paid_at \
           FROM generate_series(1, $4) g \
           JOIN invoices i ON i.id = 'inv_' || $2 || lpad(g::text, 20, '0') \
           JOIN (VALUES (0, 'eip155:1', 'eip155:1/slip44:60'), (1, 'eip155:137', 'eip155:137/erc20:0xe7f1725e7734ce288f8367e1bb143e90bb3f0512'), \
                        (2, 'stripe', 'iso4217:USD')) c(k, chain, asset) ON c.k = g % 3 \
          WHERE g % 10 < 6",
    )
    .bind(merchant)
    .bind(tag)
    .bind(entry)
    .bind(count)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, merchant_id, event_type, object_id, payload, created_at) \
         SELECT 'evt_' || $2 || e.kind || lpad(g::text, 20, '0'), $1, 'invoice.' || e.name, 'inv_' || $2 || lpad(g::text, 20, '0'), '{}'::jsonb, now() \
           FROM generate_series(1, $3) g, (VALUES ('a', 'created'), ('b', 'expired')) e(kind, name)",
    )
    .bind(merchant)
    .bind(tag)
    .bind(count)
    .execute(pool)
    .await?;
    Ok(())
}

async fn run(options: PgConnectOptions) -> Result<()> {
    let invoices = support::env_u64("BENCH_CONSOLE_INVOICES", 100_000)?;
    let warmup = support::env_u64("BENCH_CONSOLE_WARMUP", 3)?;
    let requests = support::env_u64("BENCH_CONSOLE_REQUESTS", 30)?.max(1);
    println!("payrail console benchmark");
    println!(
        "machine: {} cores, load average {}; {invoices} invoices; {requests} requests per page after {warmup}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::load_average()
    );
    let (config, state) = support::dev_state(options, POOL_MAX).await?;
    let pool = state.pool.clone();

    let seeding = Instant::now();
    let merchant = create_merchant(&pool, "Console bench").await?;
    let other = create_merchant(&pool, "Other").await?;
    let finance = create_platform_key(&pool, Role::Finance).await?;
    let entry = NewEntry::new("bench-console", "payment")
        .debit(AccountCode::stripe(payrail::money::Fiat::USD), "iso4217:USD", Amount::from_u64(1_000))
        .credit(AccountCode::merchant(&merchant.merchant_id), "iso4217:USD", Amount::from_u64(1_000));
    let posted = state.ledger.post_now(&entry).await?;
    seed(&pool, &merchant.merchant_id, "a", invoices, posted.entry_id).await?;
    seed(&pool, &other.merchant_id, "b", 10_000, posted.entry_id).await?;
    let endpoint = payrail::webhook::endpoint::create_endpoint(
        &pool,
        &merchant.merchant_id,
        "https://hooks.example.com/payrail",
        None,
        chrono::Utc::now(),
        false,
        &state.webhook_secrets,
    )
    .await?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, outbox_id, object_id, status, attempts, first_attempt_at, \
                                         last_attempt_at, last_status_code, completed_at, created_at) \
         SELECT 'whd_' || lpad(o.id::text, 20, '0'), $1, o.id, o.object_id, \
                CASE WHEN o.id % 40 = 0 THEN 'failed' ELSE 'delivered' END, 1, now(), now(), \
                CASE WHEN o.id % 40 = 0 THEN 500 ELSE 200 END, now(), now() \
           FROM outbox o WHERE o.merchant_id = $2 ORDER BY o.id DESC LIMIT 20000",
    )
    .bind(&endpoint.endpoint.id)
    .bind(&merchant.merchant_id)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO reconciliation_runs (id, source, from_block, to_block, scanned_to, status, ok, differences, report, created_at, finished_at) \
         SELECT 'rec_bench' || lpad(g::text, 12, '0'), 'eip155:1', g * 1000, g * 1000 + 999, g * 1000 + 999, 'finished', g % 20 <> 0, \
                CASE WHEN g % 20 = 0 THEN 2 ELSE 0 END, '{}'::jsonb, now() - g * interval '3 hours', now() - g * interval '3 hours' \
           FROM generate_series(1, 200) g",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO payout_batches (id, run_id, chain, asset, token, batcher, batch_key, status, total_minor, recipients, tx_hash, \
                                     block_number, created_at, updated_at, finished_at) \
         SELECT 'po_bench' || lpad(g::text, 12, '0'), 'run_bench' || lpad(g::text, 12, '0'), 'eip155:137', \
                'eip155:137/erc20:0xe7f1725e7734ce288f8367e1bb143e90bb3f0512', '0x' || repeat('0', 40), '0x' || repeat('1', 40), \
                '0x' || lpad(to_hex(g), 64, '0'), 'confirmed', 1000000 + g, 3, '0x' || lpad(to_hex(g), 64, 'a'), g, \
                now() - g * interval '2 hours', now() - g * interval '2 hours', now() - g * interval '2 hours' \
           FROM generate_series(1, 500) g",
    )
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!("seeded in {:.1?}", seeding.elapsed());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = payrail::app::http(state.clone(), payrail::app::limits(&config));
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await });
    // The keys' own rate, as the API benchmark sets it: what is measured is the work of a page.
    sqlx::query("UPDATE api_keys SET requests_per_s = 100000, burst = 1000000").execute(&pool).await?;
    let merchant_cookie = format!("payrail_session={}", session(&pool, &merchant.api_key, "m").await?);
    let finance_cookie = format!("payrail_session={}", session(&pool, &finance, "f").await?);

    let mid: String = sqlx::query_scalar("SELECT id FROM invoices WHERE merchant_id = $1 ORDER BY created_at DESC, id DESC OFFSET 50000 LIMIT 1")
        .bind(&merchant.merchant_id)
        .fetch_one(&pool)
        .await?;
    let paid: String = sqlx::query_scalar("SELECT invoice_id FROM payments WHERE merchant_id = $1 ORDER BY seen_at DESC OFFSET 1000 LIMIT 1")
        .bind(&merchant.merchant_id)
        .fetch_one(&pool)
        .await?;
    let merchant_pages = [
        ("merchant overview", "/console".to_owned()),
        ("invoices", "/console/invoices".to_owned()),
        ("invoices, status paid", "/console/invoices?status=paid".to_owned()),
        ("invoices, rail Polygon", "/console/invoices?rail=eip155%3A137".to_owned()),
        ("invoices, rail BSC (none)", "/console/invoices?rail=eip155%3A56".to_owned()),
        ("invoices, one order id", "/console/invoices?order_id=order-77777".to_owned()),
        ("invoices, a month's range", "/console/invoices?from=2026-01-01&to=2026-01-31".to_owned()),
        ("invoices, page 1,000", format!("/console/invoices?after={mid}")),
        ("invoices CSV", "/console/invoices?status=expired&csv=invoices".to_owned()),
        ("invoice detail", format!("/console/invoices/{paid}")),
        ("balances", "/console/balances".to_owned()),
        ("settlements & refunds", "/console/money_out".to_owned()),
        ("webhooks", "/console/webhooks".to_owned()),
        ("API keys", "/console/keys".to_owned()),
        ("sessions", "/console/sessions".to_owned()),
    ];
    let finance_pages = [
        ("finance overview", "/console".to_owned()),
        ("chains", "/console/chains".to_owned()),
        ("reconciliation runs", "/console/reconciliation".to_owned()),
        ("trial balance", "/console/trial_balance".to_owned()),
        ("payouts", "/console/payouts".to_owned()),
        ("unapplied funds", "/console/unapplied".to_owned()),
    ];
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let mut rows = Vec::new();
    let mut first_overview = None;
    for (pages, cookie) in [(&merchant_pages[..], &merchant_cookie), (&finance_pages[..], &finance_cookie)] {
        for (name, path) in pages {
            let mut times = Vec::new();
            for n in 0..warmup.max(1) + requests {
                let started = Instant::now();
                let response = client.get(format!("{base}{path}")).header("cookie", cookie.as_str()).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                let took = started.elapsed();
                if status != reqwest::StatusCode::OK {
                    bail!("{path} answered {status}: {}", String::from_utf8_lossy(&body));
                }
                if n == 0 && *name == "merchant overview" {
                    // The first look sums the past 30 days; later ones use the kept sums.
                    first_overview = Some(took);
                }
                if n >= warmup.max(1) {
                    times.push(took);
                }
            }
            times.sort();
            let pick = |per_mille: usize| times[(times.len() - 1) * per_mille / 1_000];
            let (p50, p95, max) = (pick(500), pick(950), pick(1_000));
            println!("{name:<28} p50 {:>8}   p95 {:>8}   max {:>8}", fmt(p50), fmt(p95), fmt(max));
            rows.push((name.to_string(), p95));
        }
    }
    let worst = rows.iter().map(|r| r.1).max().unwrap_or_default();
    let met = worst.as_millis() <= GOAL_P95_MS;
    println!("goal every page p95 ≤ {GOAL_P95_MS} ms: {} (slowest p95 {})", if met { "met" } else { "not met" }, fmt(worst));
    let first_overview = first_overview.unwrap_or_default();
    println!("merchant overview, first look after start (30 days summed): {}", fmt(first_overview));
    support::summary_header();
    support::summary_row(&format!("console merchant overview, first look after start, {invoices} invoices"), &fmt(first_overview), "-", "-", "-");
    for (name, p95) in &rows {
        support::summary_row(&format!("console {name}, {invoices} invoices, p95"), &fmt(*p95), "-", "-", &format!("≤ {GOAL_P95_MS} ms"));
    }
    pool.close().await;
    Ok(())
}

fn fmt(d: Duration) -> String {
    support::ms(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
