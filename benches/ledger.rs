//! Ledger throughput against its own ceiling and against a peer.
//!
//! What is measured: committed journal entries per second through [`Ledger::post_now`], the path
//! every payment takes. Each call validates the entry, resolves its accounts (from the ledger's
//! cache, warmed before measuring, as in a long-running daemon), and writes the entry and its
//! postings in one autocommit statement with every database invariant on: the append-only
//! triggers, the statement trigger that checks the postings and moves balance rows (and guards
//! accounts that may not go negative), and the deferred sum-to-zero and has-postings check that runs
//! at commit.
//!
//! Scenarios: {2, 4} postings per entry × {1, 16} concurrent writers (one tokio task each, on a
//! pool of writers + 2 connections) × {hot1, hot16, spread} accounts. Hot entries all credit the
//! same merchant(s), whose guarded balance is one row (`hot1`: every writer must lock that row
//! until it commits) or 16 rows (`hot16`, how the ledger keeps every account); spread entries
//! credit merchants picked at random from 1,000. All debit the chain's asset account and (with four
//! postings) credit platform fees, both kept on 16 rows so concurrent writers do not queue on
//! them. Merchants are only ever credited, so no guarded balance can go negative, and every account
//! and merchant balance row exists before measuring (created and funded through the ledger
//! itself), so the steady state is measured, not first-use inserts.
//!
//! The ceiling ("plain"): the same writers, on a pool of the same size, against the same server in
//! the same database, each entry one autocommit statement doing the same work in the same round
//! trip — insert the entry row, insert its postings, add each account's amount to one of its
//! balance rows (the same number of rows per account as the ledger keeps, picked at random the same
//! way) — into plain tables with no triggers, constraints, foreign keys or secondary indexes (the
//! balance rows' primary key stays: the upsert needs it). What separates the two is exactly what the
//! ledger adds: validation and fingerprinting in the daemon, the checks, indexes and the guard in
//! the database. Each ceiling is measured right after its ledger scenario, so a machine whose load
//! drifts during the run still compares like with like.
//!
//! The peer: pgledger, a ledger written as PostgreSQL functions, when `PGLEDGER_DIR` names a
//! checkout of it (its `pgledger.sql` and the ULID functions it vendors are loaded into the bench
//! database). It runs right after the ceiling with the same writers and the same economic event:
//! its transfers from the chain's account to the merchant(s) (one transfer for two postings, three
//! for four, in one call), merchants kept non-negative as in payrail. pgledger keeps one balance row
//! per account, so its `hot1` and `hot16` rows are the same workload.
//!
//! The second peer: sqlx-ledger, a ledger crate on sqlx, when `SQLX_LEDGER_PEER` names the binary
//! of `benches/peers/sqlx-ledger` (which `scripts/bench` builds when `SQLX_LEDGER_DIR` names a
//! checkout of sqlx-ledger, whose migration it loads into the bench database). It runs last in each
//! scenario, in a process of its own with the same writers, warm-up and window: one
//! `post_transaction` per payment through a template of two or four entries. It keeps one balance
//! row per account, so its `hot1` and `hot16` rows are the same workload.
//!
//! Each run lasts `BENCH_SECONDS` (default 5) after a warm-up of `BENCH_WARMUP_SECONDS` (default
//! 1); only entries committed inside the measured window count. Rates are integers computed from
//! counts and elapsed microseconds. The run happens in a fresh database `payrail_bench_<pid>` on the
//! server named by `DATABASE_URL`, dropped at the end, also when the run fails or is interrupted.
//! After the ledger scenarios every balance is checked against the sum of its postings.
//!
//! Run with `cargo bench --bench ledger`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use payrail::ledger::{AccountCode, Ledger, NewEntry};
use payrail::money::{Amount, ChainId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::task::JoinHandle;

const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const SECONDS_DEFAULT: u64 = 5;
const WARMUP_SECONDS_DEFAULT: u64 = 1;
/// The goal: the ledger keeps at least this share of the plain ceiling, in percent.
const GOAL_PERCENT: u64 = 70;
/// The goal against pgledger: at least this many times its entries per second.
const GOAL_PGLEDGER: u64 = 2;
/// Goal: at least this many times sqlx-ledger's rate on every row.
const GOAL_SQLX_LEDGER: u64 = 5;
/// Merchants the spread scenarios pick from.
const MERCHANTS: usize = 1_000;
/// USDC on Ethereum, as a CAIP-19 asset id: the kind of asset string real postings carry.
const ASSET: &str = "eip155:1/erc20:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
/// What each merchant is credited before measuring, so its balance row exists.
const FUNDING_PER_MERCHANT: u64 = 1_000_000;
/// Credits per funding entry (one debit is added; the ledger allows 512 postings).
const FUNDING_CHUNK: usize = 500;
/// How often a posting is retried after a retryable error (deadlock, lost connection, …).
const ATTEMPTS_MAX: u32 = 10;
/// How often the coordinator looks for a writer that stopped early.
const TICK: Duration = Duration::from_millis(100);
/// How long a writer waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

const PLAIN_TABLES_SQL: &str = r#"
CREATE TABLE plain_entries (
    id              BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT,
    kind            TEXT,
    created_at      TIMESTAMPTZ DEFAULT now()
);
CREATE TABLE plain_postings (
    id         BIGSERIAL PRIMARY KEY,
    entry_id   BIGINT,
    account_id BIGINT,
    asset      TEXT,
    amount     NUMERIC(78, 0)
);
CREATE TABLE plain_balances (
    account_id BIGINT,
    asset      TEXT,
    shard      SMALLINT,
    balance    NUMERIC(78, 0),
    PRIMARY KEY (account_id, asset, shard)
);
"#;

/// The ceiling statement: the ledger's work without what the ledger adds. `$6` holds each
/// posting's amount in its account's normal direction, `$7` how many balance rows its account has.
const PLAIN_SQL: &str = r#"
WITH e AS (
    INSERT INTO plain_entries (idempotency_key, kind)
    VALUES ($1, $2)
    RETURNING id
), p AS (
    INSERT INTO plain_postings (entry_id, account_id, asset, amount)
    SELECT e.id, x.account_id, x.asset, x.amount::numeric
    FROM e, unnest($3::int8[], $4::text[], $5::text[]) WITH ORDINALITY AS x(account_id, asset, amount, ord)
    ORDER BY x.ord
)
INSERT INTO plain_balances AS b (account_id, asset, shard, balance)
SELECT d.account_id, d.asset, floor(random() * d.shards)::smallint, d.delta
FROM (
    SELECT x.account_id, x.asset, x.shards, sum(x.delta::numeric) AS delta
    FROM unnest($3::int8[], $4::text[], $6::text[], $7::int2[]) AS x(account_id, asset, delta, shards)
    GROUP BY x.account_id, x.asset, x.shards
) d
ORDER BY d.account_id, d.asset
ON CONFLICT (account_id, asset, shard) DO UPDATE SET balance = b.balance + EXCLUDED.balance
"#;

/// Every balance compared with the sum of its postings (in the account's normal direction), in
/// both directions: a balance without postings is as wrong as postings without a balance.
const BALANCES_VS_POSTINGS_SQL: &str = r#"
WITH from_postings AS (
    SELECT p.account_id, p.asset,
           CASE WHEN a.normal_side = 'debit' THEN sum(p.amount) ELSE -sum(p.amount) END AS total
    FROM postings p JOIN accounts a ON a.id = p.account_id
    GROUP BY p.account_id, p.asset, a.normal_side
), from_balances AS (
    SELECT account_id, asset, sum(balance) AS total FROM balances GROUP BY account_id, asset
)
SELECT a.code, account_id, asset, fp.total::text AS from_postings, fb.total::text AS from_balances
FROM from_postings fp
FULL JOIN from_balances fb USING (account_id, asset)
LEFT JOIN accounts a ON a.id = account_id
WHERE fp.total IS DISTINCT FROM fb.total
ORDER BY account_id, asset
LIMIT 10
"#;

fn main() -> Result<()> {
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(bench(config))
}

/// Creates the bench database, runs everything in it, and drops it whatever happened.
async fn bench(config: Config) -> Result<()> {
    let admin_options: PgConnectOptions = config.url.parse().context("DATABASE_URL is not a valid url")?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(admin_options.clone())
        .await
        .with_context(|| format!("cannot connect to {}", config.url))?;
    let database = format!("payrail_bench_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .with_context(|| format!("cannot create database {database}"))?;

    let target = Target { options: admin_options.database(&database), url: support::url_with_database(&config.url, &database)? };
    support::run_then_drop(admin, &database, run(config, target)).await
}

/// Settings read from the environment.
#[derive(Debug, Clone)]
struct Config {
    url: String,
    seconds: u64,
    warmup_seconds: u64,
}

impl Config {
    fn from_env() -> Result<Self> {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.to_owned());
        let seconds = support::env_u64("BENCH_SECONDS", SECONDS_DEFAULT)?;
        let warmup_seconds = support::env_u64("BENCH_WARMUP_SECONDS", WARMUP_SECONDS_DEFAULT)?;
        ensure!(seconds > 0, "BENCH_SECONDS must be at least 1");
        Ok(Self { url, seconds, warmup_seconds })
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_seconds)
    }
}

/// The bench database.
#[derive(Debug, Clone)]
struct Target {
    options: PgConnectOptions,
    /// The same database as a URL, for the sqlx-ledger peer's process.
    url: String,
}

impl Target {
    async fn pool(&self, connections: u32) -> Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(self.options.clone())
            .await
            .context("cannot connect to the bench database")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accounts {
    /// Every entry credits the same merchant(s), each kept on one balance row.
    Hot1,
    /// Every entry credits the same merchant(s), each kept on 16 balance rows.
    Hot16,
    /// Every entry credits merchants picked at random.
    Spread,
}

impl Accounts {
    fn name(self) -> &'static str {
        match self {
            Self::Hot1 => "hot1",
            Self::Hot16 => "hot16",
            Self::Spread => "spread",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    postings: usize,
    writers: usize,
    accounts: Accounts,
}

impl Scenario {
    fn all() -> Vec<Self> {
        let mut all = Vec::new();
        for postings in [2, 4] {
            for writers in [1, 16] {
                for accounts in [Accounts::Hot1, Accounts::Hot16, Accounts::Spread] {
                    all.push(Self { postings, writers, accounts });
                }
            }
        }
        all
    }

    fn tag(&self) -> String {
        format!("p{}w{}{}", self.postings, self.writers, self.accounts.name())
    }

    fn pool_size(&self) -> Result<u32> {
        u32::try_from(self.writers + 2).context("too many writers")
    }
}

/// The accounts the scenarios post to, with their database ids and balance row counts.
#[derive(Debug)]
struct Chart {
    chain: AccountCode,
    fees: AccountCode,
    hot1: [AccountCode; 2],
    hot16: [AccountCode; 2],
    merchants: Vec<AccountCode>,
    ids: HashMap<AccountCode, i64>,
    shards: HashMap<i64, i16>,
}

impl Chart {
    fn new() -> Result<Self> {
        let chain: ChainId = "eip155:1".parse().context("eip155:1 is a valid chain id")?;
        Ok(Self {
            chain: AccountCode::chain_assets(&chain),
            fees: AccountCode::platform_fees(),
            hot1: [AccountCode::merchant("mer_hot1"), AccountCode::merchant("mer_hot1_b")],
            hot16: [AccountCode::merchant("mer_hot16"), AccountCode::merchant("mer_hot16_b")],
            merchants: (0..MERCHANTS).map(|i| AccountCode::merchant(&format!("mer_{i:04}"))).collect(),
            ids: HashMap::new(),
            shards: HashMap::new(),
        })
    }

    fn all(&self) -> impl Iterator<Item = &AccountCode> {
        [&self.chain, &self.fees].into_iter().chain(&self.hot1).chain(&self.hot16).chain(&self.merchants)
    }

    fn id(&self, account: &AccountCode) -> Result<i64> {
        self.ids.get(account).copied().with_context(|| format!("account {account} was not created"))
    }

    fn shards(&self, id: i64) -> Result<i16> {
        self.shards.get(&id).copied().with_context(|| format!("account id {id} has no balance row count"))
    }

    /// Two distinct merchants, or the two hot ones.
    fn merchants_for<R: Rng>(&self, accounts: Accounts, rng: &mut R) -> (&AccountCode, &AccountCode) {
        match accounts {
            Accounts::Hot1 => (&self.hot1[0], &self.hot1[1]),
            Accounts::Hot16 => (&self.hot16[0], &self.hot16[1]),
            Accounts::Spread => {
                let a = rng.gen_range(0..MERCHANTS);
                let b = (a + rng.gen_range(1..MERCHANTS)) % MERCHANTS;
                (&self.merchants[a], &self.merchants[b])
            }
        }
    }

    /// The legs of one payment. Two postings: the chain's assets grow, a merchant is owed the
    /// payment. Four postings: the same payment with a platform fee taken and a share to a second
    /// merchant.
    fn legs<R: Rng>(&self, scenario: &Scenario, rng: &mut R) -> Vec<Leg<'_>> {
        let (first, second) = self.merchants_for(scenario.accounts, rng);
        if scenario.postings == 2 {
            vec![Leg::debit(&self.chain, 10), Leg::credit(first, 10)]
        } else {
            vec![Leg::debit(&self.chain, 10), Leg::credit(first, 7), Leg::credit(&self.fees, 1), Leg::credit(second, 2)]
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Leg<'a> {
    account: &'a AccountCode,
    debit: bool,
    value: u64,
}

impl<'a> Leg<'a> {
    fn debit(account: &'a AccountCode, value: u64) -> Self {
        Self { account, debit: true, value }
    }

    fn credit(account: &'a AccountCode, value: u64) -> Self {
        Self { account, debit: false, value }
    }

    /// The amount as stored: debits positive, credits negative.
    fn signed(&self) -> String {
        if self.debit {
            self.value.to_string()
        } else {
            format!("-{}", self.value)
        }
    }

    /// How the leg moves its account's balance, kept in the account's normal direction.
    fn delta(&self) -> String {
        if self.debit == self.account.account_type().is_debit_normal() {
            self.value.to_string()
        } else {
            format!("-{}", self.value)
        }
    }
}

fn ledger_entry(key: String, kind: &str, legs: &[Leg<'_>]) -> NewEntry {
    legs.iter().fold(NewEntry::new(key, kind), |entry, leg| {
        if leg.debit {
            entry.debit(leg.account.clone(), ASSET, Amount::from_u64(leg.value))
        } else {
            entry.credit(leg.account.clone(), ASSET, Amount::from_u64(leg.value))
        }
    })
}

/// Counters shared by the writers of one run and its coordinator.
#[derive(Debug, Default)]
struct Progress {
    stop: AtomicBool,
    committed: AtomicU64,
    retries: AtomicU64,
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Entries committed inside the measured window.
    entries: u64,
    elapsed_us: u64,
    /// Entries committed over the whole run, warm-up included.
    total: u64,
    retries: u64,
    /// The CPU the measured window used (the machine's, and the writers' own process's).
    cpu: support::CpuUse,
}

impl Measured {
    fn per_second(&self) -> u64 {
        rate(self.entries, self.elapsed_us)
    }
}

/// Events per second from a count and elapsed microseconds, in integers.
fn rate(count: u64, elapsed_us: u64) -> u64 {
    let per_second = u128::from(count) * 1_000_000 / u128::from(elapsed_us.max(1));
    u64::try_from(per_second).unwrap_or(u64::MAX)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Runs `writers` writers through the warm-up and the measured window, then stops them. Each
/// writer loops until told to stop, adding to `committed` after every commit; a writer that fails
/// stops the others and its error is returned.
async fn drive<F, Fut>(writers: usize, config: &Config, spawn: F) -> Result<Measured>
where
    F: Fn(usize, Arc<Progress>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let progress = Arc::new(Progress::default());
    let handles: Vec<JoinHandle<Result<()>>> =
        (0..writers).map(|writer| tokio::spawn(spawn(writer, progress.clone()))).collect();

    let mut measured = None;
    if wait(config.warmup(), &progress).await {
        let before = progress.committed.load(Ordering::SeqCst);
        let started = Instant::now();
        let cpu = support::CpuMark::now()?;
        if wait(config.window(), &progress).await {
            let after = progress.committed.load(Ordering::SeqCst);
            measured = Some((after - before, micros(started.elapsed()), cpu.since()?));
        }
    }
    progress.stop.store(true, Ordering::SeqCst);
    let mut failure = None;
    for handle in handles {
        let result = handle.await.map_err(|e| anyhow!("a writer panicked: {e}")).and_then(|r| r);
        if let Err(error) = result {
            failure.get_or_insert(error);
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let (entries, elapsed_us, cpu) = measured.context("a writer stopped early without an error")?;
    Ok(Measured {
        entries,
        elapsed_us,
        cpu,
        total: progress.committed.load(Ordering::SeqCst),
        retries: progress.retries.load(Ordering::SeqCst),
    })
}

/// Sleeps for `span`, waking early when a writer raised the stop flag. True when the full span
/// passed.
async fn wait(span: Duration, progress: &Progress) -> bool {
    let until = tokio::time::Instant::now() + span;
    loop {
        if progress.stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(TICK)).await;
    }
}

/// A writer loop that raises the stop flag when it fails, so the run ends at once. `step` prepares
/// entry number `seq` and returns the future that commits it.
async fn writer_loop<F, Fut>(progress: Arc<Progress>, mut step: F) -> Result<()>
where
    F: FnMut(u64) -> Fut + Send,
    Fut: Future<Output = Result<()>> + Send,
{
    let mut seq = 0;
    while !progress.stop.load(Ordering::SeqCst) {
        if let Err(error) = step(seq).await {
            progress.stop.store(true, Ordering::SeqCst);
            return Err(error);
        }
        seq += 1;
        progress.committed.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Ledger entries per second for one scenario.
async fn run_ledger(target: &Target, chart: &Arc<Chart>, scenario: Scenario, config: &Config) -> Result<Measured> {
    let pool = target.pool(scenario.pool_size()?).await?;
    let ledger = Arc::new(Ledger::new(pool.clone()));
    // Every account exists already: resolving it once puts its id in this ledger's cache.
    {
        let mut conn = pool.acquire().await?;
        for account in chart.all() {
            ledger.account_id(&mut conn, account, true).await?;
        }
    }
    let chart = chart.clone();
    run_writers(pool, scenario, config, "ledger", move |key, rng, progress| {
        let entry = ledger_entry(key, "payment", &chart.legs(&scenario, rng));
        let (ledger, progress) = (ledger.clone(), progress.clone());
        async move { post_with_retries(&ledger, &entry, &progress).await }
    })
    .await
}

/// Runs `scenario`'s writers through [`drive`] on `pool`, closed afterwards. `step` makes the
/// future that commits one entry, from its idempotency key (unique per writer and entry), the
/// writer's random stream and the run's counters.
async fn run_writers<F, Fut>(pool: PgPool, scenario: Scenario, config: &Config, what: &str, step: F) -> Result<Measured>
where
    F: Fn(String, &mut StdRng, &Arc<Progress>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let tag = scenario.tag();
    let measured = drive(scenario.writers, config, |writer, progress| {
        let step = step.clone();
        let tag = tag.clone();
        let counters = progress.clone();
        let mut rng = StdRng::seed_from_u64(seed(writer));
        writer_loop(progress, move |seq| step(format!("bench:{tag}:{writer}:{seq}"), &mut rng, &counters))
    })
    .await;
    pool.close().await;
    measured.with_context(|| format!("{what} scenario {tag}"))
}

/// A random stream per writer, the same on every run.
fn seed(writer: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15 ^ writer as u64
}

/// Posts `entry`, retrying errors that may succeed when retried. A retry may find the entry
/// already committed (its commit's answer was lost), which counts as posted.
async fn post_with_retries(ledger: &Ledger, entry: &NewEntry, progress: &Progress) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ledger.post_now(entry).await {
            Ok(posted) if posted.created || attempt > 1 => return Ok(()),
            Ok(_) => bail!("idempotency key {} was already posted", entry.idempotency_key),
            Err(error) if error.is_retryable() && attempt < ATTEMPTS_MAX => {
                progress.retries.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => return Err(error).with_context(|| format!("posting {}", entry.idempotency_key)),
        }
    }
}

/// One plain entry: the rows the ceiling statement takes, in account id order as the ledger
/// writes them.
struct PlainEntry {
    ids: Vec<i64>,
    assets: Vec<String>,
    amounts: Vec<String>,
    deltas: Vec<String>,
    shards: Vec<i16>,
}

impl PlainEntry {
    fn new(chart: &Chart, legs: &[Leg<'_>]) -> Result<Self> {
        let mut rows = legs
            .iter()
            .map(|leg| {
                let id = chart.id(leg.account)?;
                Ok((id, leg.signed(), leg.delta(), chart.shards(id)?))
            })
            .collect::<Result<Vec<_>>>()?;
        rows.sort_by_key(|(id, ..)| *id);
        Ok(Self {
            ids: rows.iter().map(|(id, ..)| *id).collect(),
            assets: rows.iter().map(|_| ASSET.to_owned()).collect(),
            amounts: rows.iter().map(|(_, amount, ..)| amount.clone()).collect(),
            deltas: rows.iter().map(|(_, _, delta, _)| delta.clone()).collect(),
            shards: rows.iter().map(|(.., shards)| *shards).collect(),
        })
    }

    async fn write(&self, pool: &PgPool, key: &str, kind: &str) -> Result<()> {
        sqlx::query(PLAIN_SQL)
            .bind(key)
            .bind(kind)
            .bind(&self.ids)
            .bind(&self.assets)
            .bind(&self.amounts)
            .bind(&self.deltas)
            .bind(&self.shards)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Plain entries per second for the same writers, postings and accounts.
async fn run_plain(target: &Target, chart: &Arc<Chart>, scenario: Scenario, config: &Config) -> Result<Measured> {
    let pool = target.pool(scenario.pool_size()?).await?;
    let (chart, writes) = (chart.clone(), pool.clone());
    run_writers(pool, scenario, config, "plain", move |key, rng, _| {
        // The same work the ledger does on its side: ids from a map, rows in id order.
        let entry = PlainEntry::new(&chart, &chart.legs(&scenario, rng));
        let pool = writes.clone();
        async move { entry?.write(&pool, &key, "payment").await }
    })
    .await
}

/// pgledger loaded into the bench database, with an account per payrail account.
#[derive(Debug)]
struct Pgledger {
    accounts: HashMap<AccountCode, String>,
}

/// The pgledger call for an entry of `legs`: one transfer per credited account, from the debited
/// chain account, all in one call (one transaction).
const PGLEDGER_SQL: &str = "SELECT count(*) FROM pgledger_create_transfers(\
     (SELECT array_agg(ROW($1, t.to_id, t.amount::numeric)::transfer_request ORDER BY t.ord) \
      FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(to_id, amount, ord)), \
     NULL::timestamptz, NULL::jsonb)";

impl Pgledger {
    /// Loads pgledger from the checkout at `dir` and creates its accounts: the chain's may go
    /// negative (money comes from outside), merchants and fees may not, as in payrail.
    async fn load(pool: &PgPool, dir: &Path, chart: &Chart) -> Result<Self> {
        for file in ["vendor/scoville-pgsql-ulid/ulid-to-uuid.sql", "vendor/scoville-pgsql-ulid/uuid-to-ulid.sql", "pgledger.sql"] {
            let path = dir.join(file);
            let sql = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            sqlx::raw_sql(&sql).execute(pool).await.with_context(|| format!("cannot load {}", path.display()))?;
        }
        let mut accounts = HashMap::new();
        for account in chart.all() {
            let may_go_negative = *account == chart.chain;
            let id: String = sqlx::query_scalar("SELECT id FROM pgledger_create_account($1, $2, $3, true)")
                .bind(account.as_str())
                .bind(ASSET)
                .bind(may_go_negative)
                .fetch_one(pool)
                .await
                .context("cannot create a pgledger account")?;
            accounts.insert(account.clone(), id);
        }
        Ok(Self { accounts })
    }

    fn id(&self, account: &AccountCode) -> Result<String> {
        self.accounts.get(account).cloned().with_context(|| format!("no pgledger account for {account}"))
    }

    /// The transfers for an entry of `legs`: from the chain's account to each credited account.
    fn transfers(&self, chart: &Chart, legs: &[Leg<'_>]) -> Result<Transfers> {
        let credits = legs.iter().filter(|leg| !leg.debit);
        Ok(Transfers {
            from: self.id(&chart.chain)?,
            to: credits.clone().map(|leg| self.id(leg.account)).collect::<Result<_>>()?,
            amounts: credits.map(|leg| leg.value.to_string()).collect(),
        })
    }
}

/// One pgledger call's parameters.
struct Transfers {
    from: String,
    to: Vec<String>,
    amounts: Vec<String>,
}

impl Transfers {
    async fn write(&self, pool: &PgPool) -> Result<()> {
        let made: i64 =
            sqlx::query_scalar(PGLEDGER_SQL).bind(&self.from).bind(&self.to).bind(&self.amounts).fetch_one(pool).await?;
        ensure!(made == self.to.len() as i64, "pgledger made {made} transfers, not {}", self.to.len());
        Ok(())
    }
}

/// sqlx-ledger's peer binary, its schema and accounts set up in the bench database.
struct SqlxLedgerPeer {
    binary: PathBuf,
}

impl SqlxLedgerPeer {
    /// Loads sqlx-ledger's migration from the checkout at `dir` and creates its journal, accounts
    /// and templates (the binary's `setup`).
    async fn set_up(binary: PathBuf, dir: &Path, url: &str) -> Result<Self> {
        let migrations = dir.join("migrations");
        let migration = std::fs::read_dir(&migrations)
            .with_context(|| format!("cannot read {}", migrations.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".up.sql"))
            .with_context(|| format!("no .up.sql in {}", migrations.display()))?;
        let peer = Self { binary };
        peer.call(&["setup", url, &migration.to_string_lossy()]).await?;
        Ok(peer)
    }

    async fn call(&self, args: &[&str]) -> Result<String> {
        let output = tokio::process::Command::new(&self.binary)
            .args(args)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        ensure!(
            output.status.success(),
            "sqlx-ledger peer {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// sqlx-ledger entries per second for the same writers, postings and accounts, warm-up and
    /// window; and how many of its tries failed and were made again.
    async fn run(&self, url: &str, scenario: Scenario, config: &Config) -> Result<(u64, u64)> {
        let accounts = if scenario.accounts == Accounts::Spread { "spread" } else { "hot" };
        let answer = self
            .call(&[
                "run",
                url,
                &scenario.postings.to_string(),
                &scenario.writers.to_string(),
                accounts,
                &config.warmup_seconds.to_string(),
                &config.seconds.to_string(),
            ])
            .await?;
        let field = |name: &str| -> Result<u64> {
            let words: Vec<&str> = answer.split_whitespace().collect();
            let at = words.iter().position(|w| *w == name).with_context(|| format!("no {name} in {answer:?}"))?;
            Ok(words.get(at + 1).context("a number")?.parse()?)
        };
        Ok((rate(field("entries")?, field("micros")?), field("retries")?))
    }
}

/// pgledger entries per second for the same writers, postings and accounts.
async fn run_pgledger(
    target: &Target,
    chart: &Arc<Chart>,
    pgledger: &Arc<Pgledger>,
    scenario: Scenario,
    config: &Config,
) -> Result<Measured> {
    let pool = target.pool(scenario.pool_size()?).await?;
    let (chart, pgledger, writes) = (chart.clone(), pgledger.clone(), pool.clone());
    run_writers(pool, scenario, config, "pgledger", move |_, rng, _| {
        let transfers = pgledger.transfers(&chart, &chart.legs(&scenario, rng));
        let pool = writes.clone();
        async move { transfers?.write(&pool).await }
    })
    .await
}

/// One row of the result table.
#[derive(Debug)]
struct ScenarioRow {
    scenario: Scenario,
    ledger: u64,
    plain: u64,
    pgledger: Option<u64>,
    sqlx_ledger: Option<u64>,
    retries: u64,
    /// The CPU per entry of the ledger's window and of the ceiling's.
    ledger_cpu: Measured,
    plain_cpu: Measured,
}

impl ScenarioRow {
    fn percent(&self) -> u64 {
        percent(self.ledger, self.plain)
    }

    /// What bounds the ledger's rate, from its window and the ceiling's: with the cores full, the
    /// CPU each entry takes (rate ≈ cores ÷ CPU per entry, so the two CPU figures set the ratio);
    /// with cores left idle, waiting — one commit at a time, or the one balance row every writer
    /// locks until it commits.
    fn bound(&self) -> String {
        let (ledger, plain) = (&self.ledger_cpu, &self.plain_cpu);
        let cpu = |m: &Measured| format!("{} µs ({} in the writers' process)", m.cpu.per(m.entries), m.cpu.own_per(m.entries));
        let what = if ledger.cpu.cores_full() {
            "CPU".to_owned()
        } else if self.scenario.writers == 1 {
            "one entry at a time (round trip, statement, commit)".to_owned()
        } else if self.scenario.accounts == Accounts::Hot1 {
            "the one balance row each entry locks until it commits".to_owned()
        } else {
            "waiting (cores left idle)".to_owned()
        };
        format!(
            "{what}: cores {} % busy; CPU per entry {} against the ceiling's {} (cores {} % busy)",
            ledger.cpu.busy_percent,
            cpu(ledger),
            cpu(plain),
            plain.cpu.busy_percent
        )
    }

    /// payrail over sqlx-ledger in tenths.
    fn tenths_of_sqlx_ledger(&self) -> Option<u64> {
        self.sqlx_ledger.map(|peer| u64::try_from(u128::from(self.ledger) * 10 / u128::from(peer.max(1))).unwrap_or(u64::MAX))
    }

    /// payrail over pgledger in tenths (25 = 2.5×).
    fn tenths_of_pgledger(&self) -> Option<u64> {
        self.pgledger.map(|peer| u64::try_from(u128::from(self.ledger) * 10 / u128::from(peer.max(1))).unwrap_or(u64::MAX))
    }
}

fn percent(part: u64, whole: u64) -> u64 {
    let share = u128::from(part) * 100 / u128::from(whole.max(1));
    u64::try_from(share).unwrap_or(u64::MAX)
}

/// Totals of everything the ledger committed, for the invariant check.
#[derive(Debug, Default)]
struct Posted {
    entries: u64,
    postings: u64,
}

async fn run(config: Config, target: Target) -> Result<()> {
    let setup = target.pool(4).await?;
    payrail::db::migrate(&setup).await.context("migrations failed")?;
    sqlx::raw_sql(PLAIN_TABLES_SQL).execute(&setup).await.context("cannot create the plain tables")?;
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&setup).await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&setup).await?;

    let mut posted = Posted::default();
    let chart = Arc::new(prepare_accounts(&setup, &mut posted).await?);
    let pgledger_dir = std::env::var_os("PGLEDGER_DIR").map(PathBuf::from);
    let pgledger = match &pgledger_dir {
        Some(dir) => Some(Arc::new(Pgledger::load(&setup, dir, &chart).await?)),
        None => None,
    };
    let sqlx_ledger = match (std::env::var_os("SQLX_LEDGER_PEER"), std::env::var_os("SQLX_LEDGER_DIR")) {
        (Some(binary), Some(dir)) => Some(SqlxLedgerPeer::set_up(PathBuf::from(binary), Path::new(&dir), &target.url).await?),
        _ => None,
    };

    println!("payrail ledger benchmark");
    println!(
        "server: PostgreSQL {version} (synchronous_commit={synchronous_commit}); {} s per run after {} s warm-up; load {}",
        config.seconds,
        config.warmup_seconds,
        support::load_average()
    );
    println!("ceiling: one statement per entry inserting the entry, its postings and moving balance rows, no triggers/constraints/secondary indexes");
    println!(
        "peer: pgledger {}",
        pgledger_dir.as_ref().map_or("not run (set PGLEDGER_DIR to a checkout of it)".to_owned(), |d| format!("from {}", d.display()))
    );
    println!(
        "peer: sqlx-ledger {}",
        if sqlx_ledger.is_some() { "from benches/peers/sqlx-ledger" } else { "not run (scripts/bench runs it when SQLX_LEDGER_DIR names a checkout of it)" }
    );
    println!(
        "goal: ledger >= {GOAL_PERCENT}% of the plain ceiling, >= {GOAL_PGLEDGER}× pgledger and >= {GOAL_SQLX_LEDGER}× sqlx-ledger on every row; rows below are marked"
    );
    println!();

    let mut rows = Vec::new();
    let mut sqlx_ledger_retries = 0u64;
    for scenario in Scenario::all() {
        eprintln!(
            "running {} postings, {} writer(s), {} accounts …",
            scenario.postings,
            scenario.writers,
            scenario.accounts.name()
        );
        let ledger = run_ledger(&target, &chart, scenario, &config).await?;
        posted.entries += ledger.total;
        posted.postings += ledger.total * scenario.postings as u64;
        let plain = run_plain(&target, &chart, scenario, &config).await?;
        let peer = match &pgledger {
            Some(pgledger) => Some(run_pgledger(&target, &chart, pgledger, scenario, &config).await?.per_second()),
            None => None,
        };
        let second_peer = match &sqlx_ledger {
            Some(sqlx_ledger) => {
                let (rate, retried) = sqlx_ledger.run(&target.url, scenario, &config).await?;
                sqlx_ledger_retries += retried;
                Some(rate)
            }
            None => None,
        };
        rows.push(ScenarioRow {
            scenario,
            ledger: ledger.per_second(),
            plain: plain.per_second(),
            pgledger: peer,
            sqlx_ledger: second_peer,
            retries: ledger.retries + plain.retries,
            ledger_cpu: ledger,
            plain_cpu: plain,
        });
    }

    print_table(&rows);
    support::summary_header();
    for row in &rows {
        let scenario = row.scenario;
        let (mut peer, mut ratio) = match row.pgledger {
            Some(peer) => (
                format!("plain {}/s; pgledger {peer}/s", row.plain),
                format!("{}%; {}", row.percent(), support::ratio(row.ledger, peer)),
            ),
            None => (format!("plain {}/s; pgledger not run", row.plain), format!("{}%", row.percent())),
        };
        if let Some(second) = row.sqlx_ledger {
            peer.push_str(&format!("; sqlx-ledger {second}/s"));
            ratio.push_str(&format!("; {}", support::ratio(row.ledger, second)));
        }
        support::bounded_row(
            &format!("ledger entries, {} postings, {} writer(s), {}", scenario.postings, scenario.writers, scenario.accounts.name()),
            &format!("{}/s", row.ledger),
            &peer,
            &ratio,
            &format!("≥ {GOAL_PERCENT}%; ≥ {GOAL_PGLEDGER}×; ≥ {GOAL_SQLX_LEDGER}×"),
            &row.bound(),
        );
    }
    let retried: u64 = rows.iter().map(|r| r.retries).sum();
    if retried > 0 {
        println!("note: {retried} retryable error(s) were retried");
    }
    if sqlx_ledger.is_some() {
        println!("note: sqlx-ledger failed {sqlx_ledger_retries} tries on a balance race (writers sharing an account) and made them again");
    }

    check_invariants(&setup, &posted).await?;
    println!("invariants: ok ({} entries, {} postings; every balance equals the sum of its postings)", posted.entries, posted.postings);
    setup.close().await;
    Ok(())
}

/// Creates every account through the ledger (the `hot1` merchants first by hand, kept on one
/// balance row), then funds every merchant once, in the ledger and in the plain tables alike.
async fn prepare_accounts(pool: &PgPool, posted: &mut Posted) -> Result<Chart> {
    let mut chart = Chart::new()?;
    for account in &chart.hot1 {
        sqlx::query("INSERT INTO accounts (code, normal_side, non_negative, balance_shards) VALUES ($1, 'credit', true, 1)")
            .bind(account.as_str())
            .execute(pool)
            .await
            .context("cannot create a one-row account")?;
    }
    let ledger = Ledger::new(pool.clone());
    {
        let mut conn = pool.acquire().await?;
        for account in chart.all() {
            ledger.account_id(&mut conn, account, true).await?;
        }
    }
    let rows = sqlx::query("SELECT id, code, balance_shards FROM accounts").fetch_all(pool).await?;
    for row in rows {
        let code: String = row.try_get("code")?;
        let id: i64 = row.try_get("id")?;
        chart.ids.insert(code.parse()?, id);
        chart.shards.insert(id, row.try_get("balance_shards")?);
    }
    for account in chart.all() {
        chart.id(account)?;
    }

    let funded: Vec<&AccountCode> = chart.hot1.iter().chain(&chart.hot16).chain(&chart.merchants).collect();
    for (n, chunk) in funded.chunks(FUNDING_CHUNK).enumerate() {
        let total = FUNDING_PER_MERCHANT * chunk.len() as u64;
        let mut legs = vec![Leg::debit(&chart.chain, total)];
        legs.extend(chunk.iter().map(|merchant| Leg::credit(merchant, FUNDING_PER_MERCHANT)));
        let key = format!("bench:funding:{n}");
        ledger.post_now(&ledger_entry(key.clone(), "funding", &legs)).await.context("funding the merchants")?;
        PlainEntry::new(&chart, &legs)?.write(pool, &key, "funding").await.context("funding the plain merchants")?;
        posted.entries += 1;
        posted.postings += chunk.len() as u64 + 1;
    }
    Ok(chart)
}

fn print_table(rows: &[ScenarioRow]) {
    println!(
        "{:>8}  {:>7}  {:<8}  {:>16}  {:>15}  {:>12}  {:>10}  {:>15}  {:>13}  {:>18}",
        "postings", "writers", "accounts", "ledger entries/s", "plain entries/s", "ledger/plain", "pgledger/s", "ledger/pgledger", "sqlx-ledger/s", "ledger/sqlx-ledger"
    );
    for row in rows {
        let (peer, times) = match row.pgledger {
            Some(peer) => (peer.to_string(), support::ratio(row.ledger, peer)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let (second, second_times) = match row.sqlx_ledger {
            Some(peer) => (peer.to_string(), support::ratio(row.ledger, peer)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let below = row.percent() < GOAL_PERCENT
            || row.tenths_of_pgledger().is_some_and(|t| t < GOAL_PGLEDGER * 10)
            || row.tenths_of_sqlx_ledger().is_some_and(|t| t < GOAL_SQLX_LEDGER * 10);
        let mark = if below { "  < below goal" } else { "" };
        println!(
            "{:>8}  {:>7}  {:<8}  {:>16}  {:>15}  {:>11}%  {:>10}  {:>15}  {:>13}  {:>18}{mark}",
            row.scenario.postings,
            row.scenario.writers,
            row.scenario.accounts.name(),
            row.ledger,
            row.plain,
            row.percent(),
            peer,
            times,
            second,
            second_times,
        );
    }
    let mut ratios: Vec<u64> = rows.iter().map(ScenarioRow::percent).collect();
    ratios.sort_unstable();
    if let (Some(min), Some(median)) = (ratios.first(), median(&ratios)) {
        let verdict = if *min >= GOAL_PERCENT { "every scenario meets the goal" } else { "below the goal somewhere" };
        println!();
        println!("ledger/plain: min {min}%, median {median}% (goal {GOAL_PERCENT}%: {verdict})");
    }
    peer_summary("pgledger", rows.iter().filter_map(ScenarioRow::tenths_of_pgledger).collect(), GOAL_PGLEDGER);
    peer_summary("sqlx-ledger", rows.iter().filter_map(ScenarioRow::tenths_of_sqlx_ledger).collect(), GOAL_SQLX_LEDGER);
}

/// The line saying how payrail fares against a peer over every row: `tenths` are payrail over the
/// peer per row, in tenths.
fn peer_summary(peer: &str, mut tenths: Vec<u64>, goal: u64) {
    tenths.sort_unstable();
    if let (Some(min), Some(median)) = (tenths.first(), median(&tenths)) {
        let verdict = if *min >= goal * 10 { "every scenario meets the goal" } else { "below the goal somewhere" };
        println!("ledger/{peer}: min {}.{}×, median {}.{}× (goal {goal}×: {verdict})", min / 10, min % 10, median / 10, median % 10);
    }
}

/// The median of sorted values; with an even count, the mean of the middle two, rounded down.
fn median(sorted: &[u64]) -> Option<u64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Every balance equals the sum of its postings, every entry balances, and the ledger holds
/// exactly the entries and postings that were reported committed.
async fn check_invariants(pool: &PgPool, posted: &Posted) -> Result<()> {
    let mismatches = sqlx::query(BALANCES_VS_POSTINGS_SQL).fetch_all(pool).await?;
    if !mismatches.is_empty() {
        let mut report = String::new();
        for row in &mismatches {
            let code: Option<String> = row.try_get("code")?;
            let asset: String = row.try_get("asset")?;
            let from_postings: Option<String> = row.try_get("from_postings")?;
            let from_balances: Option<String> = row.try_get("from_balances")?;
            report.push_str(&format!(
                "\n  {} {asset}: postings {} vs balances {}",
                code.as_deref().unwrap_or("?"),
                from_postings.as_deref().unwrap_or("none"),
                from_balances.as_deref().unwrap_or("none"),
            ));
        }
        bail!("INVARIANTS BROKEN: balances differ from their postings:{report}");
    }
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM postings GROUP BY entry_id, asset HAVING sum(amount) <> 0) u",
    )
    .fetch_one(pool)
    .await?;
    ensure!(unbalanced == 0, "INVARIANTS BROKEN: {unbalanced} entry/asset pair(s) do not sum to zero");
    let negative: i64 = sqlx::query_scalar("SELECT count(*) FROM balances WHERE non_negative AND balance < 0")
        .fetch_one(pool)
        .await?;
    ensure!(negative == 0, "INVARIANTS BROKEN: {negative} guarded balance row(s) are negative");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(pool).await?;
    let postings: i64 = sqlx::query_scalar("SELECT count(*) FROM postings").fetch_one(pool).await?;
    ensure!(
        u64::try_from(entries).ok() == Some(posted.entries) && u64::try_from(postings).ok() == Some(posted.postings),
        "INVARIANTS BROKEN: the ledger holds {entries} entries and {postings} postings, \
         but {} entries with {} postings were committed",
        posted.entries,
        posted.postings,
    );
    Ok(())
}
