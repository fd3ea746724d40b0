//! What watching costs as open invoices grow: the daemon's CPU while idle at the tips, its memory,
//! and how fast it catches up, with 0, 10,000 and 100,000 open invoices (an address on each of
//! the six dev chains per invoice).
//!
//! The dev chains run as `payrail dev` runs them: five anvils (the configured chain ids, a block
//! every second, `--prune-history`, the dev contracts) and the regtest node (a block every 10 s),
//! all started by this benchmark. For each count, in a fresh database `payrail_bench_watch_<pid>`:
//!
//! 1. Seeding: one invoice made through payrail, copied in SQL to the count, each copy with its
//!    own deposit address per chain (EVM addresses from a hash of the copy's number; Bitcoin
//!    regtest P2WPKH addresses from the same), all open for a day.
//! 2. `payrail serve` (the release binary, the dev configuration pointed at these chains) starts;
//!    once every chain's cursor is at its tip, its CPU time (`/proc/<pid>/stat`, user + system)
//!    is read over `BENCH_IDLE_S` (default 30) seconds of following new blocks, and its resident
//!    memory at the end (`VmRSS`).
//! 3. Catch-up: the daemon is frozen (`SIGSTOP`), `BENCH_CATCH_UP_BLOCKS` (default 5,000) blocks
//!    are mined on the polygon anvil, the daemon goes on (`SIGCONT`), and the time until polygon's
//!    cursor reaches the new tip gives blocks per second. The start (step 2, reading every watched
//!    address) is shown on its own.
//!
//! The goals compare the largest count with 0: idle CPU and catch-up within 10 %, resident memory
//! ≤ 150 MB; idle CPU is also compared with one open invoice (what watching anything costs: a
//! log read per new block per EVM chain). `BENCH_WATCH_INVOICES` (default `0,1,10000,100000`) sets
//! the counts.
//!
//! anvil comes from `PAYRAIL_ANVIL` or `scripts/tools`. Run with `cargo bench --bench watch`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bitcoin::hashes::Hash;
use payrail::clock::SystemClock;
use payrail::config::{ChainKind, Config};
use payrail::invoice::create_invoice;
use payrail::merchant::create_merchant;
use payrail_devnet::anvil::{deploy_dev_contracts_with, Anvil, DevTokenDecimals};
use payrail_devnet::regtest::{RegtestConfig, RegtestNode};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

/// Goal: idle CPU and catch-up at the largest count within this many percent of the 0 figure.
const GOAL_WITHIN_PERCENT: u64 = 10;
/// Goal: resident memory at the largest count.
const GOAL_RSS_MB: u64 = 150;
/// Seeding is done this many invoices per statement.
const SEED_BATCH: u64 = 10_000;
/// Longest wait for the daemon to reach the tips.
const READY_DEADLINE: Duration = Duration::from_secs(600);
/// The secrets key the daemon runs with (it seals nothing here).
const SECRETS_KEY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

struct Settings {
    counts: Vec<u64>,
    idle_s: u64,
    catch_up_blocks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    invoices: u64,
    /// From the daemon's start until every chain's cursor is at its tip.
    start_ms: u64,
    /// Daemon CPU while idle, in hundredths of a percent of one core.
    idle_cpu_centi_percent: u64,
    rss_kb: u64,
    catch_up_blocks_per_s: u64,
    /// Over the catch-up: how busy the cores were (percent) and the daemon's CPU per block (µs).
    catch_up_busy_percent: u64,
    catch_up_daemon_us_per_block: u64,
}

struct Chains {
    /// Chain name in environment overrides, and the anvil serving it.
    evm: Vec<(String, Anvil)>,
    regtest: payrail_devnet::regtest::RegtestHandle,
}

fn main() -> Result<()> {
    let settings = Settings {
        counts: std::env::var("BENCH_WATCH_INVOICES")
            .unwrap_or_else(|_| "0,1,10000,100000".to_owned())
            .split(',')
            .map(|c| c.trim().parse::<u64>().context("BENCH_WATCH_INVOICES: a comma-separated list of counts"))
            .collect::<Result<_>>()?,
        idle_s: support::env_u64("BENCH_IDLE_S", 30)?,
        catch_up_blocks: support::env_u64("BENCH_CATCH_UP_BLOCKS", 5_000)?,
    };
    ensure!(!settings.counts.is_empty(), "no invoice counts to run");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<()> {
    println!("payrail watching-cost benchmark");
    println!(
        "machine: {} cores, load average {} (1, 5, 15 min)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::load_average()
    );
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let config = Config::load(&config_path).with_context(|| format!("cannot load {}", config_path.display()))?;
    let chains = start_chains(&config).await?;
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut figures = Vec::new();
    for &count in &settings.counts {
        let admin_options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid url")?;
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(admin_options.clone()).await?;
        let database = format!("payrail_bench_watch_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).execute(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await?;
        let database_url = support::url_with_database(&url, &database)?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let run = {
            let (config, chains_env, regtest_url, catch_up, idle_s) =
                (config.clone(), chains.evm.iter().map(|(n, a)| (n.clone(), a.url())).collect::<Vec<_>>(), chains.regtest.electrum_url(), settings.catch_up_blocks, settings.idle_s);
            let polygon = chains.evm.iter().find(|(n, _)| n == "POLYGON").map(|(_, a)| a.url()).context("no polygon anvil")?;
            async move {
                let measured = measure(&config, &database_url, count, &chains_env, &regtest_url, &polygon, catch_up, idle_s).await?;
                let _ = sender.send(measured);
                Ok(())
            }
        };
        support::run_then_drop(admin, &database, run).await?;
        figures.push(receiver.await.context("no figures")?);
    }
    drop(chains);

    println!();
    println!("  open invoices | watched addresses | start to the tips | idle CPU (one core) | RSS | catch-up (polygon)");
    for f in &figures {
        println!(
            "  {} | {} | {} ms | {} % | {} MB | {} blocks/s",
            f.invoices,
            f.invoices * 6,
            f.start_ms,
            percent(f.idle_cpu_centi_percent),
            f.rss_kb / 1024,
            f.catch_up_blocks_per_s
        );
    }
    let (Some(base), Some(top)) = (figures.iter().find(|f| f.invoices == 0), figures.iter().max_by_key(|f| f.invoices)) else {
        return Ok(());
    };
    support::summary_header();
    let within = |base: u64, top: u64, lower_is_better: bool| {
        let limit = base * (100 + GOAL_WITHIN_PERCENT) / 100;
        if lower_is_better { top <= limit } else { top * (100 + GOAL_WITHIN_PERCENT) / 100 >= base }
    };
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let one = figures.iter().find(|f| f.invoices == 1);
    support::bounded_row(
        &format!("watch: idle CPU at {} invoices / at 0", top.invoices),
        &format!("{} %", percent(top.idle_cpu_centi_percent)),
        &format!("{} %", percent(base.idle_cpu_centi_percent)),
        &support::ratio(top.idle_cpu_centi_percent, base.idle_cpu_centi_percent.max(1)),
        &format!("≤ 1.1× ({})", met(within(base.idle_cpu_centi_percent, top.idle_cpu_centi_percent, true))),
        &one.map_or("-".to_owned(), |one| {
            format!(
                "watching at all, not how much: one open invoice idles at {} % ({} of none; {} invoices {} of one)",
                percent(one.idle_cpu_centi_percent),
                support::ratio(one.idle_cpu_centi_percent, base.idle_cpu_centi_percent.max(1)),
                top.invoices,
                support::ratio(top.idle_cpu_centi_percent, one.idle_cpu_centi_percent.max(1))
            )
        }),
    );
    if let Some(one) = one {
        support::summary_row(
            &format!("watch: idle CPU at {} invoices / at 1", top.invoices),
            &format!("{} %", percent(top.idle_cpu_centi_percent)),
            &format!("{} %", percent(one.idle_cpu_centi_percent)),
            &support::ratio(top.idle_cpu_centi_percent, one.idle_cpu_centi_percent.max(1)),
            &format!("≤ 1.1× ({})", met(within(one.idle_cpu_centi_percent, top.idle_cpu_centi_percent, true))),
        );
    }
    support::bounded_row(
        &format!("watch: catch-up blocks/s at {} invoices / at 0", top.invoices),
        &top.catch_up_blocks_per_s.to_string(),
        &base.catch_up_blocks_per_s.to_string(),
        &support::ratio(top.catch_up_blocks_per_s, base.catch_up_blocks_per_s.max(1)),
        &format!("≥ 0.9× ({})", met(within(base.catch_up_blocks_per_s, top.catch_up_blocks_per_s, false))),
        &format!(
            "cores {} % busy (at 0: {} %); the daemon's CPU per block {} µs (at 0: {} µs)",
            top.catch_up_busy_percent, base.catch_up_busy_percent, top.catch_up_daemon_us_per_block, base.catch_up_daemon_us_per_block
        ),
    );
    support::summary_row(
        &format!("watch: daemon RSS at {} invoices", top.invoices),
        &format!("{} MB", top.rss_kb / 1024),
        &format!("{} MB at 0", base.rss_kb / 1024),
        "",
        &format!("≤ {GOAL_RSS_MB} MB ({})", met(top.rss_kb / 1024 <= GOAL_RSS_MB)),
    );
    Ok(())
}

fn percent(centi: u64) -> String {
    format!("{}.{:02}", centi / 100, centi % 100)
}

/// The six dev chains: an anvil per EVM chain with the dev contracts, and the regtest node.
async fn start_chains(config: &Config) -> Result<Chains> {
    let mut evm = Vec::new();
    for spec in config.chains().iter().filter(|c| c.kind == ChainKind::Evm) {
        let chain_id = spec.caip2.evm_chain_id().context("an EVM chain without a chain id")?;
        let anvil = Anvil::start(chain_id, 0, Some(1)).await.context("cannot start anvil (scripts/tools installs it; or set PAYRAIL_ANVIL)")?;
        deploy_dev_contracts_with(&anvil.url(), DevTokenDecimals::of(spec)).await?;
        evm.push((spec.name.to_uppercase(), anvil));
    }
    let regtest = RegtestNode::start(RegtestConfig { mine_interval: Some(Duration::from_secs(10)), ..RegtestConfig::default() }).await?;
    println!("chains: {} anvils (a block per second), regtest (a block per 10 s)", evm.len());
    Ok(Chains { evm, regtest })
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    config: &Config,
    database_url: &str,
    count: u64,
    evm: &[(String, String)],
    regtest_url: &str,
    polygon: &str,
    catch_up_blocks: u64,
    idle_s: u64,
) -> Result<Figures> {
    let pool = payrail::db::connect(database_url, 4).await?;
    payrail::db::migrate(&pool).await?;
    let seeding = Instant::now();
    seed(config, &pool, count).await?;
    println!("{count} invoices: seeded in {:.1} s", seeding.elapsed().as_secs_f64());

    let daemon = || {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrail"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--allow-dev-settings"])
            .env("PAYRAIL_CONFIG", "config.dev.toml")
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .env(payrail::secrets::SECRETS_KEY_ENV, SECRETS_KEY_HEX)
            .env_remove(payrail::secrets::SECRETS_KEY_FILE_ENV)
            .env("PAYRAIL_SERVER__LISTEN", "127.0.0.1:0")
            .env("PAYRAIL_CHAINS__BITCOIN__RPC", format!("[\"{regtest_url}\"]"))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        for (name, url) in evm {
            command.env(format!("PAYRAIL_CHAINS__{name}__RPC"), format!("[\"{url}\"]"));
            // New heads pushed from the same port, as on the dev stack.
            command.env(format!("PAYRAIL_CHAINS__{name}__WS"), url.replacen("http://", "ws://", 1));
        }
        command.spawn().context("cannot start payrail serve")
    };
    let mut child = daemon()?;
    let pid = child.id().context("daemon pid")?;
    let ready = Instant::now();
    let bitcoin = config.chains().iter().find(|c| c.kind == ChainKind::Bitcoin).map(|c| c.caip2.to_string()).context("no bitcoin chain")?;
    let tips: Vec<(String, String)> = config
        .chains()
        .iter()
        .filter(|c| c.kind == ChainKind::Evm)
        .filter_map(|c| Some((c.caip2.to_string(), evm.iter().find(|(n, _)| *n == c.name.to_uppercase())?.1.clone())))
        .collect();
    wait_at_tips(&pool, &bitcoin, &tips, None).await?;
    let start_ms = u64::try_from(ready.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!("  the daemon reached every tip in {start_ms} ms");
    let (cpu_before, wall_before) = (support::process_ticks(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let cpu = support::process_ticks(pid)? - cpu_before;
    let wall_ms = u64::try_from(wall_before.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
    let rss_kb = rss_kb_of(pid)?;
    // Clock ticks are hundredths of a second: CPU ms × 10,000 / wall ms = hundredths of a percent.
    let idle_cpu_centi_percent = cpu * 10 * 10_000 / wall_ms;
    println!("  idle: {} % of one core, RSS {} MB", percent(idle_cpu_centi_percent), rss_kb / 1024);

    // The daemon is frozen while the blocks are mined, so that it meets them all at once.
    signal(pid, "-STOP")?;
    let mined = async {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": [format!("{catch_up_blocks:#x}")]});
        reqwest::Client::new().post(polygon).json(&body).send().await?.error_for_status()?;
        evm_tip(polygon).await
    }
    .await;
    let (machine, daemon) = (support::CpuMark::now()?, support::process_ticks(pid)?);
    signal(pid, "-CONT")?;
    let tip = mined?;
    let started = Instant::now();
    wait_at_tips(&pool, &bitcoin, &tips, Some(("eip155:137", tip))).await?;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
    let catch_up_busy_percent = machine.since()?.busy_percent;
    let catch_up_daemon_us_per_block = (support::process_ticks(pid)? - daemon) * 10_000 / catch_up_blocks.max(1);
    let rss_kb = rss_kb.max(rss_kb_of(pid)?);
    child.kill().await?;
    let catch_up_blocks_per_s = catch_up_blocks * 1_000 / elapsed_ms;
    println!(
        "  catch-up: {catch_up_blocks} polygon blocks in {elapsed_ms} ms ({catch_up_blocks_per_s} blocks/s); cores {catch_up_busy_percent} % busy, the daemon's CPU {catch_up_daemon_us_per_block} µs per block"
    );
    pool.close().await;
    Ok(Figures { invoices: count, start_ms, idle_cpu_centi_percent, rss_kb, catch_up_blocks_per_s, catch_up_busy_percent, catch_up_daemon_us_per_block })
}

/// One invoice made by payrail, copied `count` times in SQL, each with an address on every chain.
async fn seed(config: &Config, pool: &PgPool, count: u64) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let secrets = payrail::secrets::SecretsAtRest::Sealed(Arc::new(payrail::secrets::SecretsKey::generate()));
    let state = payrail::app::state(config, pool.clone(), Arc::new(SystemClock), secrets);
    let merchant = create_merchant(pool, "Watch bench").await?;
    let request = support::invoice_request("10.00");
    let (template, _) = create_invoice(&state.pool, &state.catalog, state.rates.as_ref(), &state.policy, &merchant.merchant_id, &request, None, chrono::Utc::now())
        .await
        .context("cannot create an invoice")?;
    let evm: Vec<String> = config.chains().iter().filter(|c| c.kind == ChainKind::Evm).map(|c| c.caip2.to_string()).collect();
    let bitcoin = config.chains().iter().find(|c| c.kind == ChainKind::Bitcoin).map(|c| c.caip2.to_string());
    let mut from = 1;
    while from <= count {
        let to = (from + SEED_BATCH - 1).min(count);
        sqlx::query(
            "INSERT INTO invoices SELECT (jsonb_populate_record(NULL::invoices, to_jsonb(i) || \
               jsonb_build_object('id', i.id || lpad(g::text, 7, '0'), 'order_id', NULL))).* \
             FROM invoices i, generate_series($2::bigint, $3::bigint) g WHERE i.id = $1",
        )
        .bind(&template.id)
        .bind(i64::try_from(from)?)
        .bind(i64::try_from(to)?)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO deposit_addresses (chain, address, invoice_id) \
             SELECT c, '0x' || substr(md5(c || g) || md5(g || c), 1, 40), $1 || lpad(g::text, 7, '0') \
             FROM unnest($2::text[]) c, generate_series($3::bigint, $4::bigint) g",
        )
        .bind(&template.id)
        .bind(&evm)
        .bind(i64::try_from(from)?)
        .bind(i64::try_from(to)?)
        .execute(pool)
        .await?;
        if let Some(bitcoin) = &bitcoin {
            let addresses: Vec<String> = (from..=to).map(regtest_address).collect();
            let ids: Vec<String> = (from..=to).map(|g| format!("{}{g:07}", template.id)).collect();
            sqlx::query("INSERT INTO deposit_addresses (chain, address, invoice_id) SELECT $1, a, i FROM unnest($2::text[], $3::text[]) AS t(a, i)")
                .bind(bitcoin)
                .bind(&addresses)
                .bind(&ids)
                .execute(pool)
                .await?;
        }
        from = to + 1;
    }
    let watched: i64 = sqlx::query_scalar("SELECT count(*) FROM deposit_addresses").fetch_one(pool).await?;
    ensure!(u64::try_from(watched)? >= count * 6, "seeded {watched} addresses for {count} invoices");
    Ok(())
}

/// A regtest P2WPKH address of its own for copy `n` (lower-case, as deposit addresses are stored).
fn regtest_address(n: u64) -> String {
    let digest = bitcoin::hashes::hash160::Hash::hash(&n.to_be_bytes());
    let hash = bitcoin::WPubkeyHash::from_byte_array(digest.to_byte_array());
    let script = bitcoin::ScriptBuf::new_p2wpkh(&hash);
    bitcoin::Address::from_script(&script, bitcoin::Network::Regtest).map(|a| a.to_string()).unwrap_or_default()
}

/// Waits until every EVM chain's cursor is within a block of its anvil's tip and the Bitcoin
/// chain has a cursor, or, with `until`, until that chain's cursor reaches that height.
async fn wait_at_tips(pool: &PgPool, bitcoin: &str, evm: &[(String, String)], until: Option<(&str, u64)>) -> Result<()> {
    let started = Instant::now();
    let at = |chain: String| async move {
        let height: Option<i64> = sqlx::query_scalar("SELECT height FROM chain_cursors WHERE chain = $1").bind(chain).fetch_optional(pool).await?;
        anyhow::Ok(height.and_then(|h| u64::try_from(h).ok()))
    };
    loop {
        let done = match until {
            Some((chain, height)) => at(chain.to_owned()).await?.is_some_and(|h| h >= height),
            None => {
                let mut all = at(bitcoin.to_owned()).await?.is_some();
                for (caip2, url) in evm {
                    let tip = evm_tip(url).await?;
                    all &= at(caip2.clone()).await?.is_some_and(|h| h + 1 >= tip);
                }
                all
            }
        };
        if done {
            return Ok(());
        }
        if started.elapsed() > READY_DEADLINE {
            bail!("the daemon did not reach the tips in {} s", READY_DEADLINE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn evm_tip(url: &str) -> Result<u64> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []});
    let answer: serde_json::Value = reqwest::Client::new().post(url).json(&body).send().await?.json().await?;
    Ok(u64::from_str_radix(answer["result"].as_str().context("tip")?.trim_start_matches("0x"), 16)?)
}

/// Sends `signal` (`kill`'s spelling) to `pid`.
fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

fn rss_kb_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}
