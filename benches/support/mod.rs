//! What both benchmarks share: running in a throw-away database that is dropped afterwards, even
//! when the run fails, panics or is interrupted.

use std::future::Future;

use anyhow::{anyhow, Context, Result};
use sqlx::PgPool;

/// `url` with its database replaced by `database`, keeping credentials and parameters.
#[allow(dead_code, reason = "benchmarks that connect by options instead of URL do not need it")]
pub fn url_with_database(url: &str, database: &str) -> Result<String> {
    let authority_start = url.find("://").map(|i| i + 3).context("DATABASE_URL has no scheme")?;
    let (head, query) = url.split_at(url[authority_start..].find('?').map_or(url.len(), |i| authority_start + i));
    let authority_end = head[authority_start..].find('/').map_or(head.len(), |i| authority_start + i);
    Ok(format!("{}/{database}{query}", &head[..authority_end]))
}

/// Runs `run` (already bound to `database`) as its own task, so that a panic in it still reaches the
/// cleanup; Ctrl-C stops it the same way. Then drops `database` through `admin` and closes `admin`.
pub async fn run_then_drop(
    admin: PgPool,
    database: &str,
    run: impl Future<Output = Result<()>> + Send + 'static,
) -> Result<()> {
    let mut run = tokio::spawn(run);
    let interrupted = async {
        // Without a signal handler the run simply cannot be interrupted this way.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        joined = &mut run => joined.map_err(|e| anyhow!("the benchmark panicked: {e}")).and_then(|r| r),
        () = interrupted => {
            run.abort();
            // The join can only report the abort just requested.
            let _ = run.await;
            Err(anyhow!("interrupted"))
        }
    };
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin)
        .await
        .with_context(|| format!("cannot drop database {database}; drop it by hand"));
    admin.close().await;
    match (outcome, dropped) {
        (Ok(()), dropped) => dropped.map(|_| ()),
        (Err(error), Ok(_)) => Err(error),
        (Err(error), Err(drop_error)) => {
            eprintln!("error: {drop_error:#}");
            Err(error)
        }
    }
}

/// The whole of a benchmark that needs only a database: a runtime, a fresh database
/// `{prefix}_{pid}` on `DATABASE_URL`'s server (the local one when unset), `run` in it, and the
/// database dropped afterwards.
#[allow(dead_code, reason = "benchmarks that build their own settings do not need it")]
pub fn in_fresh_database<F, Fut>(prefix: &str, run: F) -> Result<()>
where
    F: FnOnce(sqlx::postgres::PgConnectOptions) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin_options: sqlx::postgres::PgConnectOptions = url.parse().context("DATABASE_URL is not a valid url")?;
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(admin_options.clone()).await?;
        let database = format!("{prefix}_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await?;
        let options = admin_options.database(&database);
        run_then_drop(admin, &database, run(options)).await
    })
}

/// A pool of `pool_max` connections on `options`, migrated, and the daemon's state over it as the
/// shipped dev configuration (`config.dev.toml`) sets it up, secrets sealed under a fresh key.
#[allow(dead_code, reason = "only the benchmarks that serve the daemon's routes need it")]
pub async fn dev_state(options: sqlx::postgres::PgConnectOptions, pool_max: u32) -> Result<(payrail::config::Config, payrail::api::AppState)> {
    let pool = payrail::db::connect_with(options, pool_max).await?;
    payrail::db::migrate(&pool).await?;
    let config_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let config = payrail::config::Config::load(&config_path).with_context(|| format!("cannot load {}", config_path.display()))?;
    let secrets = payrail::secrets::SecretsAtRest::Sealed(std::sync::Arc::new(payrail::secrets::SecretsKey::generate()));
    let state = payrail::app::state(&config, pool, std::sync::Arc::new(payrail::clock::SystemClock), secrets);
    Ok((config, state))
}

/// A whole number from the environment variable `name`, or `default` when it is not set.
#[allow(dead_code, reason = "not every benchmark takes settings from the environment")]
pub fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().with_context(|| format!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Microseconds as milliseconds with one decimal.
#[allow(dead_code, reason = "not every benchmark prints latencies")]
pub fn ms(us: u64) -> String {
    format!("{}.{} ms", us / 1_000, us % 1_000 / 100)
}

/// `a / b` with two decimals, rounded down (one decimal hid 0.47 as 0.4 next to a 0.5 goal).
#[allow(dead_code, reason = "not every benchmark prints ratios")]
pub fn ratio(a: u64, b: u64) -> String {
    let hundredths = u128::from(a) * 100 / u128::from(b.max(1));
    format!("{}.{:02}×", hundredths / 100, hundredths % 100)
}

/// The machine's load average over 1, 5 and 15 minutes, as `/proc/loadavg` has it.
#[allow(dead_code, reason = "not every benchmark prints the load")]
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A decimal `text` (`12345.67`) times 10^`scale`, rounded down; `None` if it is not one.
#[allow(dead_code, reason = "only benchmarks reading other tools' output need it")]
pub fn fixed(text: &str, scale: u32) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(usize::try_from(scale).ok()?).collect();
    whole.parse::<u64>().ok()?.checked_mul(10u64.checked_pow(scale)?)?.checked_add(if digits.is_empty() { 0 } else { digits.parse().ok()? })
}

/// The summary table every benchmark ends with, one row per figure: `scripts/bench` gathers the
/// rows of all of them into one table.
#[allow(dead_code, reason = "every benchmark prints it, but each compiles this module on its own")]
pub fn summary_header() {
    println!();
    println!("| figure | payrail | peer | ratio | goal | bound |");
    println!("|---|---|---|---|---|---|");
}

/// One row of the summary table; `-` where a column does not apply.
#[allow(dead_code, reason = "every benchmark prints it, but each compiles this module on its own")]
pub fn summary_row(figure: &str, payrail: &str, peer: &str, ratio: &str, goal: &str) {
    bounded_row(figure, payrail, peer, ratio, goal, "-");
}

/// A row of the summary table with what bounds its figure, as measured in the same run.
#[allow(dead_code, reason = "every benchmark prints it, but each compiles this module on its own")]
pub fn bounded_row(figure: &str, payrail: &str, peer: &str, ratio: &str, goal: &str, bound: &str) {
    println!("| {figure} | {payrail} | {peer} | {ratio} | {goal} | {bound} |");
}

/// Where a measured window's CPU went: the whole machine's, from `/proc/stat` (every core; clock
/// ticks are hundredths of a second), and this process's own, from `/proc/self/stat`. What bounds
/// a figure is read from it: cores near full mean CPU, cores left idle mean waiting (a commit, a
/// lock, a round trip).
#[allow(dead_code, reason = "not every benchmark accounts its CPU")]
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    busy: u64,
    total: u64,
    own: u64,
}

/// The CPU one window used; see [`CpuMark`].
#[allow(dead_code, reason = "not every benchmark accounts its CPU")]
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Busy share of all cores over the window, in percent.
    pub busy_percent: u64,
    /// CPU time used on the whole machine, in microseconds.
    pub machine_us: u64,
    /// CPU time used by this process, in microseconds.
    pub own_us: u64,
}

#[allow(dead_code, reason = "not every benchmark accounts its CPU")]
impl CpuMark {
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).context("/proc/stat has no cpu line")?;
        let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user already)
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        Ok(Self { busy, total: busy + at(3) + at(4), own: process_ticks(std::process::id())? })
    }

    /// The CPU used since this mark.
    pub fn since(self) -> Result<CpuUse> {
        let now = Self::now()?;
        let busy = now.busy.saturating_sub(self.busy);
        let total = now.total.saturating_sub(self.total).max(1);
        Ok(CpuUse { busy_percent: busy * 100 / total, machine_us: busy * 10_000, own_us: now.own.saturating_sub(self.own) * 10_000 })
    }
}

#[allow(dead_code, reason = "not every benchmark accounts its CPU")]
impl CpuUse {
    /// Machine CPU per operation, in microseconds.
    pub fn per(&self, operations: u64) -> u64 {
        self.machine_us / operations.max(1)
    }

    /// This process's CPU per operation, in microseconds.
    pub fn own_per(&self, operations: u64) -> u64 {
        self.own_us / operations.max(1)
    }

    /// Whether the cores were the limit: at least 90 % busy.
    pub fn cores_full(&self) -> bool {
        self.busy_percent >= 90
    }
}

/// User + system CPU time of `pid`, in clock ticks (hundredths of a second).
#[allow(dead_code, reason = "not every benchmark accounts its CPU")]
pub fn process_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// An invoice of `amount` USD, every asset accepted, open for a day.
#[allow(dead_code, reason = "only the benchmarks that make invoices need it")]
pub fn invoice_request(amount: &str) -> payrail::invoice::CreateInvoice {
    payrail::invoice::CreateInvoice {
        amount: amount.to_owned(),
        currency: "USD".to_owned(),
        accepted: None,
        expires_in: Some(86_400),
        order_id: None,
        metadata: None,
        customer: None,
        promo_code: None,
        redirect_url: None,
        buyer_email: None,
        locale: None,
        underpayment_tolerance_bps: None,
        speed_policy: None,
    }
}
