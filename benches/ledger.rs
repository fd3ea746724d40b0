//! Ledger throughput against its own ceiling.
//!
//! What is measured: committed journal entries per second through [`Ledger::post_now`], the path
//! every payment takes. Each call validates the entry, resolves its accounts (from the ledger's
//! cache, warmed before measuring, as in a long-running daemon), and writes the entry and its
//! postings in one transaction with every database invariant on: the append-only triggers, the
//! posting trigger that moves balance rows (and guards accounts that may not go negative), and the
//! deferred sum-to-zero and has-postings checks that run at commit.
//!
//! Scenarios: {2, 4} postings per entry × {1, 16} concurrent writers (one tokio task each, on a
//! pool of writers + 2 connections) × {hot, spread} accounts. Hot entries all credit the same
//! merchant(s), whose single, guarded balance row every writer must lock until it commits; spread
//! entries credit merchants picked at random from 1,000. Both debit the chain's asset account and
//! (with four postings) credit platform fees, which are sharded so concurrent writers do not queue
//! on them. Merchants are only ever credited, so no guarded balance can go negative, and every
//! account and merchant balance row exists before measuring (created and funded through the ledger
//! itself), so the steady state is measured, not first-use inserts.
//!
//! The ceiling: the same writers, on a pool of the same size, against the same server in the same
//! database, run one transaction per entry with the same statement shape (`BEGIN`; one
//! `WITH e AS (INSERT … RETURNING id) INSERT INTO … SELECT … FROM e, unnest(…)`; `COMMIT`) and the
//! same parameters (key, kind, account ids, assets, amounts), into two plain tables with no
//! triggers, constraints, foreign keys or secondary indexes. Both pay the same round trips, the same
//! prepared-statement handling and the same WAL flush at commit, so what separates them is exactly
//! what the ledger adds: validation and fingerprinting in the daemon, the checks, indexes and
//! balance rows in the database, and the waiting on row locks those imply. Each ceiling is measured right after its ledger scenario, so a machine whose load
//! drifts during the run still compares like with like. When `pgbench` is installed, it runs the
//! same transaction from C with the same client counts as a second ceiling figure, showing
//! whether the Rust client itself limits the first one.
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
/// The goal: the ledger keeps at least this share of the plain-insert ceiling, in percent.
const GOAL_PERCENT: u64 = 50;
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
"#;

/// The ceiling statement: the ledger's statement without what the ledger adds.
const PLAIN_SQL: &str = r#"
WITH e AS (
    INSERT INTO plain_entries (idempotency_key, kind)
    VALUES ($1, $2)
    RETURNING id
)
INSERT INTO plain_postings (entry_id, account_id, asset, amount)
SELECT e.id, x.account_id, x.asset, x.amount::numeric
FROM e, unnest($3::int8[], $4::text[], $5::text[]) WITH ORDINALITY AS x(account_id, asset, amount, ord)
ORDER BY x.ord
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

    let target = Target {
        options: admin_options.database(&database),
        url: support::url_with_database(&config.url, &database)?,
    };
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
        let seconds = env_u64("BENCH_SECONDS", SECONDS_DEFAULT)?;
        let warmup_seconds = env_u64("BENCH_WARMUP_SECONDS", WARMUP_SECONDS_DEFAULT)?;
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

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().with_context(|| format!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// The bench database, for sqlx and for pgbench.
#[derive(Debug, Clone)]
struct Target {
    options: PgConnectOptions,
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
    /// Every entry credits the same merchant(s).
    Hot,
    /// Every entry credits merchants picked at random.
    Spread,
}

impl Accounts {
    fn name(self) -> &'static str {
        match self {
            Self::Hot => "hot",
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
                for accounts in [Accounts::Hot, Accounts::Spread] {
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

/// The accounts the scenarios post to, with their database ids.
#[derive(Debug)]
struct Chart {
    chain: AccountCode,
    fees: AccountCode,
    hot: [AccountCode; 2],
    merchants: Vec<AccountCode>,
    ids: HashMap<AccountCode, i64>,
}

impl Chart {
    fn new() -> Result<Self> {
        let chain: ChainId = "eip155:1".parse().context("eip155:1 is a valid chain id")?;
        Ok(Self {
            chain: AccountCode::chain_assets(&chain),
            fees: AccountCode::platform_fees(),
            hot: [AccountCode::merchant("mer_hot"), AccountCode::merchant("mer_hot_b")],
            merchants: (0..MERCHANTS).map(|i| AccountCode::merchant(&format!("mer_{i:04}"))).collect(),
            ids: HashMap::new(),
        })
    }

    fn all(&self) -> impl Iterator<Item = &AccountCode> {
        [&self.chain, &self.fees].into_iter().chain(&self.hot).chain(&self.merchants)
    }

    fn id(&self, account: &AccountCode) -> Result<i64> {
        self.ids.get(account).copied().with_context(|| format!("account {account} was not created"))
    }

    /// Two distinct merchants, or the two hot ones.
    fn merchants_for<R: Rng>(&self, accounts: Accounts, rng: &mut R) -> (&AccountCode, &AccountCode) {
        match accounts {
            Accounts::Hot => (&self.hot[0], &self.hot[1]),
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
}

fn ledger_entry(key: String, legs: &[Leg<'_>]) -> NewEntry {
    legs.iter().fold(NewEntry::new(key, "payment"), |entry, leg| {
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
        if wait(config.window(), &progress).await {
            let after = progress.committed.load(Ordering::SeqCst);
            measured = Some((after - before, micros(started.elapsed())));
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
    let (entries, elapsed_us) = measured.context("a writer stopped early without an error")?;
    Ok(Measured {
        entries,
        elapsed_us,
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
    let tag = scenario.tag();
    let measured = drive(scenario.writers, config, |writer, progress| {
        let ledger = ledger.clone();
        let chart = chart.clone();
        let tag = tag.clone();
        let retries = progress.clone();
        let mut rng = StdRng::seed_from_u64(seed(writer));
        writer_loop(progress, move |seq| {
            let entry = ledger_entry(format!("bench:{tag}:{writer}:{seq}"), &chart.legs(&scenario, &mut rng));
            let ledger = ledger.clone();
            let retries = retries.clone();
            async move { post_with_retries(&ledger, &entry, &retries).await }
        })
    })
    .await;
    pool.close().await;
    measured.with_context(|| format!("ledger scenario {tag}"))
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

/// Plain inserts per second for the same writers, postings and accounts.
async fn run_plain(target: &Target, chart: &Arc<Chart>, scenario: Scenario, config: &Config) -> Result<Measured> {
    let pool = target.pool(scenario.pool_size()?).await?;
    let tag = scenario.tag();
    let measured = drive(scenario.writers, config, |writer, progress| {
        let pool = pool.clone();
        let chart = chart.clone();
        let tag = tag.clone();
        let mut rng = StdRng::seed_from_u64(seed(writer));
        writer_loop(progress, move |seq| {
            let key = format!("bench:{tag}:{writer}:{seq}");
            // The same work the ledger does on its side: ids from a map, rows in id order.
            let rows = chart
                .legs(&scenario, &mut rng)
                .iter()
                .map(|leg| Ok((chart.id(leg.account)?, leg.signed())))
                .collect::<Result<Vec<_>>>();
            let pool = pool.clone();
            async move {
                let mut rows = rows?;
                rows.sort_by_key(|(id, _)| *id);
                let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
                let assets: Vec<String> = rows.iter().map(|_| ASSET.to_owned()).collect();
                let amounts: Vec<String> = rows.into_iter().map(|(_, amount)| amount).collect();
                let mut tx = pool.begin().await?;
                sqlx::query(PLAIN_SQL)
                    .bind(&key)
                    .bind("payment")
                    .bind(&ids)
                    .bind(&assets)
                    .bind(&amounts)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        })
    })
    .await;
    pool.close().await;
    measured.with_context(|| format!("plain scenario {tag}"))
}

/// Where pgbench is, if anywhere.
fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("pgbench")).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut packaged: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin/pgbench")).collect())
        .unwrap_or_default();
    // The newest version first.
    packaged.sort_by(|a, b| b.cmp(a));
    on_path.into_iter().chain(packaged).find(|p| p.is_file())
}

/// The plain transaction as a pgbench script, with the same accounts as `scenario`. Text that
/// holds colons (the asset, the key prefix) comes in through `-D` variables: pgbench would take a
/// colon inside a literal for a variable reference.
fn pgbench_script(chart: &Chart, scenario: &Scenario) -> Result<String> {
    let chain = chart.id(&chart.chain)?;
    let fees = chart.id(&chart.fees)?;
    let mut script = String::new();
    let (first, second) = match scenario.accounts {
        Accounts::Hot => (chart.id(&chart.hot[0])?.to_string(), chart.id(&chart.hot[1])?.to_string()),
        Accounts::Spread => {
            // Merchants were created one after another, so their ids are consecutive.
            let base = chart.id(&chart.merchants[0])?;
            let last = chart.id(&chart.merchants[MERCHANTS - 1])?;
            ensure!(last - base + 1 == MERCHANTS as i64, "merchant ids are not consecutive");
            script.push_str(&format!("\\set a random(0, {})\n", MERCHANTS - 1));
            script.push_str(&format!("\\set b (:a + random(1, {})) % {MERCHANTS}\n", MERCHANTS - 1));
            (format!("{base} + CAST(:a AS int8)"), format!("{base} + CAST(:b AS int8)"))
        }
    };
    script.push_str("\\set seq random(1, 1000000000)\n");
    let (ids, amounts) = if scenario.postings == 2 {
        (format!("{chain}, {first}"), "'10', '-10'".to_owned())
    } else {
        (format!("{chain}, {first}, {fees}, {second}"), "'10', '-7', '-1', '-2'".to_owned())
    };
    let assets = vec!["CAST(:asset AS text)"; scenario.postings].join(", ");
    script.push_str("BEGIN;\n");
    script.push_str(&format!(
        "WITH e AS (INSERT INTO plain_entries (idempotency_key, kind) \
         VALUES (CAST(:key AS text) || CAST(:client_id AS text) || '/' || CAST(:seq AS text), 'payment') \
         RETURNING id) \
         INSERT INTO plain_postings (entry_id, account_id, asset, amount) \
         SELECT e.id, x.account_id, x.asset, x.amount::numeric \
         FROM e, unnest(ARRAY[{ids}]::int8[], ARRAY[{assets}]::text[], ARRAY[{amounts}]::text[]) \
         WITH ORDINALITY AS x(account_id, asset, amount, ord) ORDER BY x.ord;\n"
    ));
    script.push_str("COMMIT;\n");
    Ok(script)
}

/// pgbench's transactions per second for the plain transaction, warm-up first.
async fn run_pgbench(pgbench: &Path, target: &Target, chart: &Chart, scenario: Scenario, config: &Config) -> Result<u64> {
    let mut file = tempfile::Builder::new().prefix("payrail-bench-").suffix(".sql").tempfile()?;
    std::io::Write::write_all(&mut file, pgbench_script(chart, &scenario)?.as_bytes())?;
    let run = Pgbench {
        binary: pgbench,
        url: &target.url,
        script: file.path(),
        clients: scenario.writers,
        key: format!("bench:{}:pgbench:", scenario.tag()),
    };
    if config.warmup_seconds > 0 {
        run.tps(config.warmup_seconds).await?;
    }
    run.tps(config.seconds).await
}

/// One pgbench invocation, less its duration.
#[derive(Debug)]
struct Pgbench<'a> {
    binary: &'a Path,
    url: &'a str,
    script: &'a Path,
    clients: usize,
    key: String,
}

impl Pgbench<'_> {
    /// Prepared statements, as sqlx uses; no vacuum (the plain tables need none).
    async fn tps(&self, seconds: u64) -> Result<u64> {
        let output = tokio::process::Command::new(self.binary)
            .args(["-n", "-M", "prepared", "-j", "2"])
            .arg("-c")
            .arg(self.clients.to_string())
            .arg("-T")
            .arg(seconds.to_string())
            .arg("-D")
            .arg(format!("asset={ASSET}"))
            .arg("-D")
            .arg(format!("key={}", self.key))
            .arg("-f")
            .arg(self.script)
            .arg(self.url)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first_error = stderr.lines().next().unwrap_or_default();
        ensure!(output.status.success(), "pgbench failed ({}): {first_error}", output.status);
        ensure!(!stderr.contains("aborted"), "pgbench aborted: {first_error}");
        parse_pgbench_tps(&stdout).with_context(|| format!("no tps in pgbench's output: {}", stdout.trim()))
    }
}

/// The whole part of `tps = 1234.567 (without initial connection time)`.
fn parse_pgbench_tps(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|whole| whole.parse().ok())
}

/// One row of the result table.
#[derive(Debug)]
struct ScenarioRow {
    scenario: Scenario,
    ledger: u64,
    plain: u64,
    pgbench: Option<u64>,
    retries: u64,
}

impl ScenarioRow {
    fn percent(&self) -> u64 {
        percent(self.ledger, self.plain)
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
    let pgbench = find_pgbench();

    println!("payrail ledger benchmark");
    println!(
        "server: PostgreSQL {version} (synchronous_commit={synchronous_commit}); {} s per run after {} s warm-up",
        config.seconds, config.warmup_seconds
    );
    println!(
        "ceiling: plain inserts, same statement shape and writers, no triggers/constraints/indexes; pgbench: {}",
        pgbench.as_ref().map_or("not found".to_owned(), |p| p.display().to_string())
    );
    println!("goal: ledger entries/s >= {GOAL_PERCENT}% of the plain (Rust) ceiling; rows below it are marked");
    println!();

    let mut rows = Vec::new();
    let mut notes = Vec::new();
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
        let pgbench_tps = match &pgbench {
            Some(path) => match run_pgbench(path, &target, &chart, scenario, &config).await {
                Ok(tps) => Some(tps),
                Err(error) => {
                    notes.push(format!("pgbench skipped for {}: {error:#}", scenario.tag()));
                    None
                }
            },
            None => None,
        };
        rows.push(ScenarioRow {
            scenario,
            ledger: ledger.per_second(),
            plain: plain.per_second(),
            pgbench: pgbench_tps,
            retries: ledger.retries + plain.retries,
        });
    }

    print_table(&rows);
    for note in &notes {
        println!("note: {note}");
    }
    let retried: u64 = rows.iter().map(|r| r.retries).sum();
    if retried > 0 {
        println!("note: {retried} retryable error(s) were retried");
    }

    check_invariants(&setup, &posted).await?;
    println!("invariants: ok ({} entries, {} postings; every balance equals the sum of its postings)", posted.entries, posted.postings);
    setup.close().await;
    Ok(())
}

/// Creates every account through the ledger, then funds every merchant once so that its balance
/// row exists before measuring (merchants are only ever credited, so they never go negative).
async fn prepare_accounts(pool: &PgPool, posted: &mut Posted) -> Result<Chart> {
    let mut chart = Chart::new()?;
    let ledger = Ledger::new(pool.clone());
    {
        let mut conn = pool.acquire().await?;
        for account in chart.all() {
            ledger.account_id(&mut conn, account, true).await?;
        }
    }
    let rows = sqlx::query("SELECT id, code FROM accounts").fetch_all(pool).await?;
    for row in rows {
        let code: String = row.try_get("code")?;
        chart.ids.insert(code.parse()?, row.try_get("id")?);
    }
    for account in chart.all() {
        chart.id(account)?;
    }

    let funded: Vec<&AccountCode> = chart.hot.iter().chain(&chart.merchants).collect();
    for (n, chunk) in funded.chunks(FUNDING_CHUNK).enumerate() {
        let total = FUNDING_PER_MERCHANT * chunk.len() as u64;
        let entry = chunk.iter().fold(
            NewEntry::new(format!("bench:funding:{n}"), "funding").debit(
                chart.chain.clone(),
                ASSET,
                Amount::from_u64(total),
            ),
            |entry, merchant| entry.credit((*merchant).clone(), ASSET, Amount::from_u64(FUNDING_PER_MERCHANT)),
        );
        ledger.post_now(&entry).await.context("funding the merchants")?;
        posted.entries += 1;
        posted.postings += chunk.len() as u64 + 1;
    }
    Ok(chart)
}

fn print_table(rows: &[ScenarioRow]) {
    println!(
        "{:>8}  {:>7}  {:<8}  {:>16}  {:>15}  {:>11}  {:>12}",
        "postings", "writers", "accounts", "ledger entries/s", "plain entries/s", "pgbench tps", "ledger/plain"
    );
    for row in rows {
        let pgbench = row.pgbench.map_or("-".to_owned(), |tps| tps.to_string());
        let mark = if row.percent() < GOAL_PERCENT { "  < below goal" } else { "" };
        println!(
            "{:>8}  {:>7}  {:<8}  {:>16}  {:>15}  {:>11}  {:>11}%{mark}",
            row.scenario.postings,
            row.scenario.writers,
            row.scenario.accounts.name(),
            row.ledger,
            row.plain,
            pgbench,
            row.percent(),
        );
    }
    let mut ratios: Vec<u64> = rows.iter().map(ScenarioRow::percent).collect();
    ratios.sort_unstable();
    if let (Some(min), Some(median)) = (ratios.first(), median(&ratios)) {
        let verdict = if *min >= GOAL_PERCENT { "every scenario meets the goal" } else { "below the goal somewhere" };
        println!();
        println!("ledger/plain: min {min}%, median {median}% (goal {GOAL_PERCENT}%: {verdict})");
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
