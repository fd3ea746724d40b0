//! The EVM watcher's speed against two general-purpose indexers, and how quickly a payment shows.
//!
//! The output has five parts, run in this order against one anvil (chain id 137, a block per
//! transaction, `--prune-history`) with the dev contracts, and with nothing else using that anvil:
//!
//! 1. The range: `BENCH_BATCHES` (default 500) transactions of the test USDC's `batchTransfer`
//!    with 100 `Transfer`s each, from anvil's first account, each followed by 10 empty blocks
//!    (`anvil_mine`) so that the transfers spread over the range (5,500 blocks and 50,000 transfers
//!    by default). Two transfers of every batch (2%) go to the deposit addresses of `BENCH_WATCHED`
//!    (default 200) open invoices, the others to 1,000 addresses derived from a counter with
//!    keccak; recipients and amounts are deterministic, and the benchmark records how many
//!    transfers each watched address got and their total.
//! 2. payrail's catch-up: an [`EvmWatcher`] with the shipped polygon configuration (`rpc` replaced
//!    by the anvil, `start_block` the first block of the range) ticking until it reports
//!    an idle [`ChainEvent::Committed`], that last tick included. Afterwards the `payments` table must hold exactly
//!    the watched transfers (count and sum per invoice), or the run fails.
//! 3. ethereum-etl (`ethereumetl export_token_transfers -b 100 -w 2`, to a CSV file) and cryo (its
//!    Python wheel, `cryo.collect("erc20_transfers", …)`), from the virtual environment that
//!    `scripts/bench-peers` installs outside the repository; a peer that cannot be installed is
//!    skipped with a line saying so. Both run in a Python process that times their work alone
//!    (ethereum-etl through its command-line entry point, with the same arguments), so the
//!    interpreter's start and the imports are not counted against them; the whole process is
//!    reported too. Each peer must find every transfer of the range. Both index every transfer;
//!    payrail only the transfers to watched addresses, as a payment daemon does.
//! 4. Where payrail's catch-up time goes: the watcher's RPC patterns replayed alone over the range
//!    (full blocks 8 in flight, the same without transaction bodies, full blocks in JSON-RPC
//!    batches of 100, the `eth_getLogs` per 100 blocks); the rest of the catch-up is the database
//!    and the watcher's own work.
//! 5. Latency from a payment's block to the invoice update: the watcher runs live
//!    ([`EvmWatcher::run`]) on the same anvil; a payment is sent to a fresh invoice, and from the
//!    moment its receipt is available the invoice is read every 10 ms until it is `processing`.
//!    Ten payments, each sent a different pause after the previous one was seen, so that they
//!    land at different points of the watcher's polling interval; once with the watcher polling
//!    the tip alone, once woken by new heads over WebSocket (anvil's `ws://`, as on the dev stack).
//!
//! The summary compares blocks per second: the goals are payrail ≥ 10× ethereum-etl and payrail ≥
//! cryo. Rates are integers computed from counts and elapsed microseconds.
//!
//! Everything happens in a fresh database `payrail_bench_idx_<pid>` on the server named by
//! `DATABASE_URL`, dropped at the end, also when the run fails or is interrupted. anvil comes from
//! `PAYRAIL_ANVIL` or `scripts/tools`; the peers' venv from `PAYRAIL_BENCH_VENV`
//! (default `/var/tmp/payrail-bench-venv`).
//!
//! Run with `cargo bench --bench indexer`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{keccak256, Address, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use payrail::api::AppState;
use payrail::chain::evm::contracts::TestToken;
use payrail::chain::evm::{EvmClient, EvmWatcher};
use payrail::chain::ChainEvent;
use payrail::clock::SystemClock;
use payrail::config::{ChainSpec, Config, RpcUrl};
use payrail_devnet::anvil::{deploy_dev_contracts, Anvil, DEV_DEPLOYER_KEY, DEV_PAYER_KEY};
use payrail::invoice::{create_invoice, CreateInvoice, InvoiceView};
use payrail::merchant::create_merchant;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Row;

const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const WATCHED_DEFAULT: u64 = 200;
const BATCHES_DEFAULT: u64 = 500;
/// `Transfer`s per `batchTransfer` transaction.
const TRANSFERS_PER_BATCH: usize = 100;
/// Of those, how many go to watched deposit addresses (2%).
const WATCHED_PER_BATCH: usize = 2;
/// Empty blocks mined after each batch transaction.
const EMPTY_BLOCKS_PER_BATCH: u64 = 10;
/// The range the task calls for at least; smaller runs (`BENCH_BATCHES`) say they are smaller.
const RANGE_BLOCKS_MIN: u64 = 5_000;
const RANGE_TRANSFERS_MIN: u64 = 50_000;
/// The other transfers go to this many addresses, derived from a counter with keccak. Not a fresh
/// address per transfer: each new holder adds a storage slot, and anvil copies its state for every
/// block it mines, so a state growing by 100 slots per batch makes generating the range take
/// minutes (135 s against 5 s for 2,200 blocks, measured) without changing what an indexer reads.
const RECIPIENTS: u64 = 1_000;
/// Gas for one batch transaction (100 first-time balances cost about 2.7 M).
const BATCH_GAS: u64 = 6_000_000;
const TRANSFER_GAS: u64 = 100_000;
/// Transfer amounts in USDC's smallest unit: up to 1 USDC to others, up to 0.1 USDC to invoices
/// (so the invoices of 10 USD stay open: the catch-up measures payments, not status changes).
const OTHER_AMOUNT_MAX: u64 = 1_000_000;
const WATCHED_AMOUNT_MAX: u64 = 100_000;
/// What the benchmark invoices are for.
const INVOICE_AMOUNT: &str = "10.00";
const INVOICE_LIFETIME_S: u64 = 86_400;
/// The goals, as integer ratios of blocks per second.
const GOAL_OVER_ETL: u64 = 10;
const GOAL_CRYO_DIVISOR: u64 = 1;
/// Latency runs, how often the invoice is read, how long one may take.
const LATENCY_RUNS: u64 = 10;
const STATUS_POLL: Duration = Duration::from_millis(10);
const RECEIPT_POLL: Duration = Duration::from_millis(2);
const LATENCY_DEADLINE: Duration = Duration::from_secs(30);
/// The watcher's fetch pattern, replayed in the breakdown.
const FETCH_CONCURRENCY: usize = payrail::chain::evm::watcher::BLOCK_FETCHES_CONCURRENT_MAX;
const TICK_BLOCKS: u64 = payrail::chain::evm::watcher::BLOCKS_PER_TICK_MAX;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// ethereum-etl's command line run inside the interpreter, so that the export is timed apart from
/// the interpreter's start and the imports: `argv[1:]` are the `ethereumetl` arguments. Prints one
/// JSON line with both times.
const ETL_SCRIPT: &str = r#"
import json, sys, time
t0 = time.perf_counter_ns()
from ethereumetl.cli import cli
t1 = time.perf_counter_ns()
cli.main(args=sys.argv[1:], prog_name="ethereumetl", standalone_mode=False)
t2 = time.perf_counter_ns()
print(json.dumps({"import_us": (t1 - t0) // 1000, "work_us": (t2 - t1) // 1000}))
"#;

/// cryo over `argv[1]` (cryo's block range syntax, end excluded) on `argv[2]`; prints one JSON line:
/// rows, lowest and highest block, rows to the addresses listed in the file `argv[3]`, and how long
/// the import and the collection took inside the interpreter.
const CRYO_SCRIPT: &str = r#"
import json, sys, time
t0 = time.perf_counter_ns()
import cryo
t1 = time.perf_counter_ns()
df = cryo.collect("erc20_transfers", blocks=[sys.argv[1]], rpc=sys.argv[2], verbose=False)
t2 = time.perf_counter_ns()
with open(sys.argv[3]) as f:
    watched = {line.strip().lower() for line in f if line.strip()}
def norm(a):
    return "0x" + a.hex() if isinstance(a, (bytes, bytearray)) else str(a).lower()
blocks = df["block_number"].to_list() if df.height else []
hits = sum(1 for a in df["to_address"].to_list() if norm(a) in watched) if df.height else 0
print(json.dumps({"rows": df.height, "min_block": min(blocks) if blocks else None,
                  "max_block": max(blocks) if blocks else None, "watched": hits,
                  "import_us": (t1 - t0) // 1000, "work_us": (t2 - t1) // 1000}))
"#;

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(bench(settings))
}

#[derive(Debug, Clone)]
struct Settings {
    url: String,
    watched: usize,
    batches: u64,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.to_owned());
        let watched = support::env_u64("BENCH_WATCHED", WATCHED_DEFAULT)?;
        let batches = support::env_u64("BENCH_BATCHES", BATCHES_DEFAULT)?;
        ensure!(watched > 0, "BENCH_WATCHED must be at least 1");
        ensure!(batches > 0, "BENCH_BATCHES must be at least 1");
        Ok(Self { url, watched: usize::try_from(watched).context("BENCH_WATCHED")?, batches })
    }
}

/// Creates the bench database, runs everything in it, and drops it whatever happened.
async fn bench(settings: Settings) -> Result<()> {
    let admin_options: PgConnectOptions = settings.url.parse().context("DATABASE_URL is not a valid url")?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(admin_options)
        .await
        .with_context(|| format!("cannot connect to {}", settings.url))?;
    let database = format!("payrail_bench_idx_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .with_context(|| format!("cannot create database {database}"))?;
    let target = support::url_with_database(&settings.url, &database)?;

    // Dropping the run kills anvil and the peers.
    support::run_then_drop(admin, &database, run(settings, target)).await
}

// ---------------------------------------------------------------------------------------------
// Arithmetic and formatting, in integers.

/// Events per second from a count and elapsed microseconds.
fn rate(count: u64, elapsed_us: u64) -> u64 {
    let per_second = u128::from(count) * 1_000_000 / u128::from(elapsed_us.max(1));
    u64::try_from(per_second).unwrap_or(u64::MAX)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds as seconds with two decimals.
fn secs(us: u64) -> String {
    format!("{}.{:02} s", us / 1_000_000, us % 1_000_000 / 10_000)
}

/// Thousands separated by commas.
fn n(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median of sorted values; with an even count, the mean of the middle two, rounded down.
fn median(sorted: &[u64]) -> Option<u64> {
    let len = sorted.len();
    match len {
        0 => None,
        _ if len % 2 == 1 => Some(sorted[len / 2]),
        _ => Some((sorted[len / 2 - 1] + sorted[len / 2]) / 2),
    }
}

/// A deterministic 32-byte value for (`tag`, `counter`).
fn derive(tag: &[u8], counter: u64) -> [u8; 32] {
    let mut input = tag.to_vec();
    input.extend_from_slice(&counter.to_be_bytes());
    keccak256(&input).0
}

fn derived_u64(bytes: &[u8; 32]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(word)
}

// ---------------------------------------------------------------------------------------------
// Raw JSON-RPC to anvil, for generating the range and sending payments without a wallet stack
// (anvil's default accounts are unlocked).

#[derive(Debug, Clone)]
struct Node {
    http: reqwest::Client,
    url: String,
}

impl Node {
    fn new(url: String) -> Self {
        Self { http: reqwest::Client::new(), url }
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut response: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{method}: no answer from anvil"))?
            .json()
            .await
            .with_context(|| format!("{method}: not JSON"))?;
        if let Some(error) = response.get("error") {
            bail!("{method}: {error}");
        }
        Ok(response["result"].take())
    }

    /// One HTTP request with several JSON-RPC calls; the answers in request order.
    async fn batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Value>> {
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(id, (method, params))| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .collect();
        let answers: Vec<Value> = self.http.post(&self.url).json(&body).send().await?.json().await?;
        ensure!(answers.len() == calls.len(), "batch of {} answered with {}", calls.len(), answers.len());
        let mut ordered = vec![Value::Null; calls.len()];
        for mut answer in answers {
            if let Some(error) = answer.get("error") {
                bail!("batched call failed: {error}");
            }
            let id = answer["id"].as_u64().and_then(|i| usize::try_from(i).ok()).context("batch answer without id")?;
            *ordered.get_mut(id).context("batch answer with an unknown id")? = answer["result"].take();
        }
        Ok(ordered)
    }

    async fn tip(&self) -> Result<u64> {
        hex_u64(&self.call("eth_blockNumber", json!([])).await?)
    }

    async fn mine(&self, blocks: u64) -> Result<()> {
        self.call("anvil_mine", json!([format!("{blocks:#x}")])).await.map(|_| ())
    }

    /// Sends a transaction from an unlocked account; returns its hash.
    async fn send(&self, from: Address, to: Address, data: Vec<u8>, gas: u64) -> Result<String> {
        let tx = json!({
            "from": format!("{from:#x}"),
            "to": format!("{to:#x}"),
            "data": alloy::hex::encode_prefixed(data),
            "gas": format!("{gas:#x}"),
        });
        let hash = self.call("eth_sendTransaction", json!([tx])).await?;
        hash.as_str().map(str::to_owned).context("eth_sendTransaction returned no hash")
    }

    /// The receipt of `hash`, polled until it exists; fails unless the transaction succeeded.
    async fn receipt(&self, hash: &str) -> Result<Value> {
        let started = Instant::now();
        loop {
            let receipt = self.call("eth_getTransactionReceipt", json!([hash])).await?;
            if !receipt.is_null() {
                ensure!(receipt["status"] == json!("0x1"), "transaction {hash} reverted");
                return Ok(receipt);
            }
            ensure!(started.elapsed() < Duration::from_secs(30), "transaction {hash} was not mined");
            tokio::time::sleep(RECEIPT_POLL).await;
        }
    }
}

fn hex_u64(value: &Value) -> Result<u64> {
    let text = value.as_str().context("expected a hex quantity")?;
    u64::from_str_radix(text.trim_start_matches("0x"), 16).with_context(|| format!("bad quantity {text}"))
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Rig {
    anvil: Anvil,
    node: Node,
    state: AppState,
    spec: ChainSpec,
    merchant_id: String,
    usdc: Address,
    usdc_asset: String,
}

impl Rig {
    async fn invoice(&self) -> Result<InvoiceView> {
        let request = CreateInvoice {
            amount: INVOICE_AMOUNT.to_owned(),
            currency: "USD".to_owned(),
            accepted: Some(vec![self.usdc_asset.clone()]),
            expires_in: Some(INVOICE_LIFETIME_S),
            order_id: None,
            metadata: None,
            customer: None,
            promo_code: None,
            ..Default::default()
        };
        let (view, _) = create_invoice(
            &self.state.pool,
            &self.state.catalog,
            self.state.rates.as_ref(),
            &self.state.policy,
            &self.merchant_id,
            &request,
            None,
            chrono::Utc::now(),
        )
        .await
        .context("cannot create an invoice")?;
        Ok(view)
    }

    fn watcher(&self, spec: &ChainSpec) -> Result<EvmWatcher> {
        Ok(EvmWatcher::new(
            spec.clone(),
            self.state.pool.clone(),
            self.state.ledger.clone(),
            self.state.rates.clone(),
            self.state.clock.clone(),
        )?)
    }
}

fn deposit_of(invoice: &InvoiceView) -> Result<Address> {
    let option = invoice.payment_options.first().context("invoice without payment option")?;
    option.address.as_deref().context("invoice without deposit address")?.parse().context("deposit address")
}

/// The generated range and what it holds.
#[derive(Debug)]
struct Range {
    first: u64,
    last: u64,
    transfers: u64,
    /// Per watched invoice: transfers and their total, in USDC's smallest unit.
    expected: HashMap<String, (u64, u128)>,
    watched_transfers: u64,
    watched_addresses: Vec<Address>,
}

impl Range {
    fn blocks(&self) -> u64 {
        self.last - self.first + 1
    }
}

async fn run(settings: Settings, database_url: String) -> Result<()> {
    let started = Instant::now();
    println!("payrail EVM indexer benchmark");
    println!(
        "machine: {} cores, load average {} (1, 5, 15 min)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::load_average()
    );

    // --- setup: anvil, contracts, configuration, database, invoices ---
    let setup_started = Instant::now();
    let anvil = Anvil::start(137, 0, None).await.context("cannot start anvil (scripts/tools installs it; or set PAYRAIL_ANVIL)")?;
    let node = Node::new(anvil.url());
    let client = node.call("web3_clientVersion", json!([])).await?;
    let contracts = deploy_dev_contracts(&anvil.url()).await?;
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let config = Config::load(&config_path).with_context(|| format!("cannot load {}", config_path.display()))?;
    let mut spec = config.chain("polygon").context("polygon is not configured")?.clone();
    let usdc_spec = spec.token("USDC").context("polygon has no USDC")?.clone();
    ensure!(
        usdc_spec.address == contracts.usdc && spec.forwarder_factory == Some(contracts.forwarder_factory),
        "config.toml's polygon contracts are not the ones deploy_dev_contracts produced"
    );
    spec.rpc = vec![RpcUrl::new(&anvil.url()).map_err(anyhow::Error::msg)?];
    // The catch-up steps the watcher by hand: pushed heads only in the latency step that asks.
    spec.ws = None;

    let pool = payrail::db::connect(&database_url, 8).await?;
    payrail::db::migrate(&pool).await?;
    // The bench creates no webhook endpoints; their secrets would be sealed under a throw-away key.
    let secrets = payrail::secrets::SecretsAtRest::Sealed(Arc::new(payrail::secrets::SecretsKey::generate()));
    let state = payrail::app::state(&config, pool.clone(), Arc::new(SystemClock), secrets);
    let merchant = create_merchant(&pool, "Indexer bench").await?;
    let rig = Rig {
        anvil,
        node,
        state,
        spec,
        merchant_id: merchant.merchant_id,
        usdc: contracts.usdc,
        usdc_asset: usdc_spec.asset_id().to_string(),
    };
    let mut invoices: Vec<(String, Address)> = Vec::with_capacity(settings.watched);
    for _ in 0..settings.watched {
        let invoice = rig.invoice().await?;
        invoices.push((invoice.id.clone(), deposit_of(&invoice)?));
    }
    println!(
        "setup: {client} on {} (chain 137, a block per transaction, --prune-history), dev contracts, \
         {} invoices of {INVOICE_AMOUNT} USD in USDC: {}",
        rig.anvil.url(),
        invoices.len(),
        secs(micros(setup_started.elapsed()))
    );

    let range = generate(&rig, &invoices, settings.batches).await?;
    let catch_up = catch_up(&rig, &range).await?;
    let peers = run_peers(&rig, &range).await;
    let spent = breakdown(&rig, &range, catch_up.elapsed_us, &database_url).await?;
    let polled = latency(&rig, false).await?;
    let pushed = latency(&rig, true).await?;

    // --- summary ---
    println!();
    println!("summary over blocks {}..={} ({} blocks, {} transfers):", range.first, range.last, n(range.blocks()), n(range.transfers));
    let payrail_rate = rate(range.blocks(), catch_up.elapsed_us);
    println!(
        "  payrail       {:>7} blocks/s  {:>8} transfers/s  (indexes the {} transfers to watched addresses)",
        n(payrail_rate),
        n(rate(range.transfers, catch_up.elapsed_us)),
        n(range.watched_transfers)
    );
    let mut peers_ok = true;
    for (name, outcome) in [("ethereum-etl", &peers.etl), ("cryo", &peers.cryo)] {
        match outcome {
            PeerOutcome::Ran(peer) => {
                peers_ok &= peer.complete;
                println!(
                    "  {name:<13} {:>7} blocks/s  {:>8} transfers/s  ({} blocks/s counting the whole process); indexes every transfer{}",
                    n(peer.rate(range.blocks())),
                    n(rate(range.transfers, peer.work_us)),
                    n(rate(range.blocks(), peer.wall_us)),
                    if peer.complete { "" } else { "; MISSED TRANSFERS" }
                );
            }
            PeerOutcome::Skipped(why) => println!("  {name:<13} skipped: {why}"),
        }
    }
    match &peers.etl {
        PeerOutcome::Ran(etl) => {
            let etl_rate = etl.rate(range.blocks());
            let met = u128::from(payrail_rate) >= u128::from(etl_rate) * u128::from(GOAL_OVER_ETL);
            println!(
                "  payrail / ethereum-etl = {} (goal ≥ {GOAL_OVER_ETL}×): {}",
                support::ratio(payrail_rate, etl_rate),
                if met { "met" } else { "NOT met" }
            );
        }
        PeerOutcome::Skipped(_) => println!("  payrail / ethereum-etl: no figure (ethereum-etl skipped)"),
    }
    match &peers.cryo {
        PeerOutcome::Ran(cryo) => {
            let cryo_rate = cryo.rate(range.blocks());
            let met = u128::from(payrail_rate) * u128::from(GOAL_CRYO_DIVISOR) >= u128::from(cryo_rate);
            println!(
                "  payrail / cryo         = {} (goal ≥ 1/{GOAL_CRYO_DIVISOR} of cryo): {}",
                support::ratio(payrail_rate, cryo_rate),
                if met { "met" } else { "NOT met" }
            );
        }
        PeerOutcome::Skipped(_) => println!("  payrail / cryo: no figure (cryo skipped)"),
    }
    for (latency, how) in [(&polled, "polling the tip"), (&pushed, "new heads over WebSocket")] {
        println!(
            "  block → invoice `processing`, {how}: min {}, median {}, max {} over {LATENCY_RUNS} payments (tip polled every {} ms)",
            support::ms(latency.min),
            support::ms(latency.median),
            support::ms(latency.max),
            latency.poll_ms
        );
    }
    println!("load average at the end {}; total run {}", support::load_average(), secs(micros(started.elapsed())));
    support::summary_header();
    for (name, outcome, goal) in [("ethereum-etl", &peers.etl, GOAL_OVER_ETL * 10), ("cryo", &peers.cryo, 10 / GOAL_CRYO_DIVISOR)] {
        let (peer, ratio, bound) = match outcome {
            PeerOutcome::Ran(peer) => {
                let peer_rate = peer.rate(range.blocks());
                let met = u128::from(payrail_rate) * 10 >= u128::from(peer_rate) * u128::from(goal);
                let bound = if met { "-".to_owned() } else { spent.bound(range.blocks(), peer_rate) };
                (format!("{name} {} blocks/s", n(peer_rate)), support::ratio(payrail_rate, peer_rate), bound)
            }
            PeerOutcome::Skipped(_) => (format!("{name} skipped"), "-".to_owned(), "-".to_owned()),
        };
        support::bounded_row(
            &format!("EVM catch-up vs {name}"),
            &format!("{} blocks/s", n(payrail_rate)),
            &peer,
            &ratio,
            &format!("≥ {}.{}×", goal / 10, goal % 10),
            &bound,
        );
    }
    support::summary_row("block → invoice `processing`, median, polling", &support::ms(polled.median), "-", "-", "-");
    support::summary_row("block → invoice `processing`, median, new heads over WebSocket", &support::ms(pushed.median), "-", "-", "-");

    let mut anvil = rig.anvil;
    anvil.stop().await;
    rig.state.pool.close().await;
    ensure!(peers_ok, "a peer indexer did not find every transfer of the range (see above)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Step 1: the range.

async fn generate(rig: &Rig, invoices: &[(String, Address)], batches: u64) -> Result<Range> {
    let deployer = DEV_DEPLOYER_KEY.parse::<PrivateKeySigner>().context("deployer key")?.address();
    let started = Instant::now();
    // The deployer mints itself more than it will send, before the range starts.
    let supply = U256::from(batches) * U256::from(TRANSFERS_PER_BATCH) * U256::from(OTHER_AMOUNT_MAX);
    let mint = TestToken::mintCall { to: deployer, amount: supply }.abi_encode();
    let hash = rig.node.send(deployer, rig.usdc, mint, TRANSFER_GAS).await?;
    rig.node.receipt(&hash).await?;

    let first = rig.node.tip().await? + 1;
    let by_address: HashMap<Address, &str> = invoices.iter().map(|(id, a)| (*a, id.as_str())).collect();
    let mut expected: HashMap<String, (u64, u128)> = HashMap::new();
    let mut counter = 0u64;
    let mut watched_transfers = 0u64;
    let mut transfers = 0u64;
    let (mut send_us, mut receipt_us, mut mine_us) = (0u64, 0u64, 0u64);
    for batch in 0..batches {
        // The watched transfers' positions in the batch: one in each equal segment, moving
        // from batch to batch.
        let segment = u64::try_from(TRANSFERS_PER_BATCH / WATCHED_PER_BATCH).unwrap_or(1);
        let watched_positions: Vec<u64> =
            (0..u64::try_from(WATCHED_PER_BATCH).unwrap_or(0)).map(|k| k * segment + (batch * (37 + 16 * k)) % segment).collect();
        let mut to = Vec::with_capacity(TRANSFERS_PER_BATCH);
        let mut amounts = Vec::with_capacity(TRANSFERS_PER_BATCH);
        for position in 0..u64::try_from(TRANSFERS_PER_BATCH).unwrap_or(0) {
            counter += 1;
            if watched_positions.contains(&position) {
                let seed = derive(b"payrail-bench-watched", counter);
                let index = usize::try_from(derived_u64(&seed) % u64::try_from(invoices.len()).unwrap_or(1)).unwrap_or(0);
                let (_, address) = invoices[index];
                let amount = 1 + derived_u64(&derive(b"amount", counter)) % WATCHED_AMOUNT_MAX;
                let invoice_id = by_address.get(&address).context("watched address without invoice")?;
                let entry = expected.entry((*invoice_id).to_owned()).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += u128::from(amount);
                watched_transfers += 1;
                to.push(address);
                amounts.push(U256::from(amount));
            } else {
                let seed = derive(b"payrail-bench-recipient", counter % RECIPIENTS);
                let address = Address::from_slice(&seed[12..]);
                ensure!(!by_address.contains_key(&address), "a derived address collides with a deposit address");
                to.push(address);
                amounts.push(U256::from(1 + derived_u64(&derive(b"amount", counter)) % OTHER_AMOUNT_MAX));
            }
        }
        let data = TestToken::batchTransferCall { to, amounts }.abi_encode();
        let sent = Instant::now();
        let hash = rig.node.send(deployer, rig.usdc, data, BATCH_GAS).await?;
        send_us += micros(sent.elapsed());
        let asked = Instant::now();
        let receipt = rig.node.receipt(&hash).await?;
        receipt_us += micros(asked.elapsed());
        let logs = receipt["logs"].as_array().map_or(0, Vec::len);
        ensure!(logs == TRANSFERS_PER_BATCH, "batch {batch} emitted {logs} logs, not {TRANSFERS_PER_BATCH}");
        transfers += u64::try_from(logs).unwrap_or(0);
        let mining = Instant::now();
        rig.node.mine(EMPTY_BLOCKS_PER_BATCH).await?;
        mine_us += micros(mining.elapsed());
    }
    let last = rig.node.tip().await?;
    let range = Range {
        first,
        last,
        transfers,
        expected,
        watched_transfers,
        watched_addresses: invoices.iter().map(|(_, a)| *a).collect(),
    };
    let elapsed = micros(started.elapsed());
    println!();
    println!(
        "1. range: blocks {first}..={last} = {} blocks, {} USDC transfers in {} batchTransfer transactions of \
         {TRANSFERS_PER_BATCH}, each followed by {EMPTY_BLOCKS_PER_BATCH} empty blocks",
        n(range.blocks()),
        n(transfers),
        n(batches)
    );
    println!(
        "   {} transfers ({}.{}%) to {} of the {} watched deposit addresses, the others to {} derived addresses",
        n(watched_transfers),
        watched_transfers * 100 / transfers.max(1),
        watched_transfers * 1000 / transfers.max(1) % 10,
        range.expected.len(),
        invoices.len(),
        n(RECIPIENTS)
    );
    println!(
        "   generated in {} (sending the batches {}, waiting for their receipts {}, anvil_mine {})",
        secs(elapsed),
        secs(send_us),
        secs(receipt_us),
        secs(mine_us)
    );
    if range.blocks() < RANGE_BLOCKS_MIN || transfers < RANGE_TRANSFERS_MIN {
        println!(
            "   note: smaller than the reference range ({} blocks, {} transfers): BENCH_BATCHES={batches}",
            n(RANGE_BLOCKS_MIN),
            n(RANGE_TRANSFERS_MIN)
        );
    }
    Ok(range)
}

// ---------------------------------------------------------------------------------------------
// Step 2: payrail's catch-up.

struct CatchUp {
    elapsed_us: u64,
}

async fn catch_up(rig: &Rig, range: &Range) -> Result<CatchUp> {
    let mut spec = rig.spec.clone();
    spec.start_block = Some(range.first);
    let watcher = rig.watcher(&spec)?;
    watcher.check_chain().await?;
    let tick_cap = range.blocks() / TICK_BLOCKS + 10;
    let mut tick_us: Vec<u64> = Vec::new();
    let mut seen = 0usize;
    let mut processed = 0u64;
    let started = Instant::now();
    loop {
        let tick_started = Instant::now();
        let tick = watcher.step().await?;
        tick_us.push(micros(tick_started.elapsed()));
        match tick {
            ChainEvent::Committed { tip, .. } if tick.is_idle() => {
                ensure!(tip == range.last, "the watcher went idle at tip {tip}, the range ends at {}", range.last);
                break;
            }
            ChainEvent::Committed { from, to, payments, .. } => {
                seen += payments;
                processed += to - from + 1;
            }
            ChainEvent::Reorged { fork_height, orphaned, .. } | ChainEvent::Reverted { fork_height, orphaned, .. } => {
                bail!("unexpected reorg to {fork_height} ({orphaned} payments orphaned) on a chain nobody rewrites")
            }
        }
        ensure!(u64::try_from(tick_us.len()).unwrap_or(u64::MAX) <= tick_cap, "the watcher did not catch up in {tick_cap} ticks");
    }
    let elapsed_us = micros(started.elapsed());
    ensure!(processed == range.blocks(), "the watcher processed {processed} blocks of {}", range.blocks());

    // The payments must be exactly the watched transfers.
    let rows = sqlx::query(
        "SELECT invoice_id, count(*) AS n, sum(amount_minor)::text AS total, \
                count(*) FILTER (WHERE asset <> $1) AS other_assets \
         FROM payments GROUP BY invoice_id",
    )
    .bind(&rig.usdc_asset)
    .fetch_all(&rig.state.pool)
    .await?;
    let mut found: HashMap<String, (u64, u128)> = HashMap::new();
    for row in &rows {
        let other: i64 = row.try_get("other_assets")?;
        ensure!(other == 0, "payments in another asset than USDC");
        let count = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
        let total: String = row.try_get("total")?;
        found.insert(row.try_get("invoice_id")?, (count, total.parse().with_context(|| format!("sum {total}"))?));
    }
    let found_total: u64 = found.values().map(|(c, _)| c).sum();
    if found != range.expected || found_total != range.watched_transfers {
        let mut report = String::new();
        for (invoice, want) in &range.expected {
            let got = found.get(invoice).copied().unwrap_or((0, 0));
            if got != *want {
                report.push_str(&format!("\n  {invoice}: expected {} transfers / {} units, found {} / {}", want.0, want.1, got.0, got.1));
            }
        }
        for (invoice, got) in &found {
            if !range.expected.contains_key(invoice) {
                report.push_str(&format!("\n  {invoice}: not paid in the range, found {} / {}", got.0, got.1));
            }
        }
        bail!(
            "PAYMENTS DO NOT MATCH THE WATCHED TRANSFERS: expected {} payments, the payments table holds {found_total}{report}",
            range.watched_transfers
        );
    }
    let idle_us = tick_us.pop().unwrap_or(0);
    let mut sorted = tick_us.clone();
    sorted.sort_unstable();
    let mean = tick_us.iter().sum::<u64>() / u64::try_from(tick_us.len()).unwrap_or(1).max(1);
    println!();
    println!(
        "2. payrail catch-up over the range: {} → {} blocks/s, {} transfers/s of the range",
        secs(elapsed_us),
        n(rate(range.blocks(), elapsed_us)),
        n(rate(range.transfers, elapsed_us))
    );
    println!(
        "   {} ticks of up to {TICK_BLOCKS} blocks (mean {}, median {}, max {}), then the idle tick ({}); {} payments reported",
        tick_us.len(),
        support::ms(mean),
        support::ms(median(&sorted).unwrap_or(0)),
        support::ms(sorted.last().copied().unwrap_or(0)),
        support::ms(idle_us),
        n(u64::try_from(seen).unwrap_or(0))
    );
    println!(
        "   checked: the payments table holds exactly the {} watched transfers (count and sum per invoice, {} invoices)",
        n(range.watched_transfers),
        range.expected.len()
    );
    Ok(CatchUp { elapsed_us })
}

// ---------------------------------------------------------------------------------------------
// Step 3: the peers.

struct Peer {
    /// The whole process: interpreter start, imports, the work, the checks.
    wall_us: u64,
    /// The export or collection alone, timed inside the interpreter.
    work_us: u64,
    complete: bool,
}

impl Peer {
    fn rate(&self, blocks: u64) -> u64 {
        rate(blocks, self.work_us)
    }
}

enum PeerOutcome {
    Ran(Peer),
    Skipped(String),
}

struct Peers {
    etl: PeerOutcome,
    cryo: PeerOutcome,
}

/// What a peer found in the range.
#[derive(Debug, Default)]
struct Found {
    rows: u64,
    min_block: Option<u64>,
    max_block: Option<u64>,
    watched: u64,
}

impl Found {
    /// Prints the check; true when the peer found every transfer of the range and nothing else.
    fn check(&self, name: &str, range: &Range) -> bool {
        let inside = self.min_block.is_some_and(|b| b >= range.first) && self.max_block.is_some_and(|b| b <= range.last);
        let complete = self.rows == range.transfers && self.watched == range.watched_transfers && inside;
        if complete {
            println!(
                "   {name} found all {} transfers (blocks {}..={}), {} of them to the watched addresses",
                n(self.rows),
                self.min_block.unwrap_or(0),
                self.max_block.unwrap_or(0),
                n(self.watched)
            );
        } else {
            println!(
                "   {name} DID NOT FIND EVERY TRANSFER: {} rows (expected {}), {} to watched addresses (expected {}), \
                 blocks {:?}..={:?} (range {}..={})",
                n(self.rows),
                n(range.transfers),
                n(self.watched),
                n(range.watched_transfers),
                self.min_block,
                self.max_block,
                range.first,
                range.last
            );
        }
        complete
    }
}

async fn run_peers(rig: &Rig, range: &Range) -> Peers {
    println!();
    println!("3. peer indexers over the same range (they index every transfer; payrail only the watched ones)");
    let venv = match peer_venv().await {
        Ok(venv) => venv,
        Err(error) => {
            let why = format!("scripts/bench-peers could not install them: {error:#}");
            println!("   ethereum-etl: skipped ({why})");
            println!("   cryo: skipped ({why})");
            return Peers { etl: PeerOutcome::Skipped(why.clone()), cryo: PeerOutcome::Skipped(why) };
        }
    };
    let scratch = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            let why = format!("no scratch directory: {error}");
            return Peers { etl: PeerOutcome::Skipped(why.clone()), cryo: PeerOutcome::Skipped(why) };
        }
    };
    let etl = match ethereum_etl(rig, range, &venv, scratch.path()).await {
        Ok(peer) => PeerOutcome::Ran(peer),
        Err(error) => {
            println!("   ethereum-etl: skipped ({error:#})");
            PeerOutcome::Skipped(format!("{error:#}"))
        }
    };
    let cryo = match cryo(rig, range, &venv, scratch.path()).await {
        Ok(peer) => PeerOutcome::Ran(peer),
        Err(error) => {
            println!("   cryo: skipped ({error:#})");
            PeerOutcome::Skipped(format!("{error:#}"))
        }
    };
    Peers { etl, cryo }
}

/// The peers' virtual environment, installed by `scripts/bench-peers` if needed.
async fn peer_venv() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-peers");
    let output = tokio::process::Command::new(&script)
        .arg("dir")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(output.status.success(), "{} exited with {}", script.display(), output.status);
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(!dir.is_empty(), "scripts/bench-peers printed no directory");
    Ok(PathBuf::from(dir))
}

/// Runs `program` with `args` to completion; its wall time and stdout. Fails with its stderr.
async fn timed(program: &Path, args: &[String]) -> Result<(u64, String)> {
    let started = Instant::now();
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    let wall_us = micros(started.elapsed());
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        bail!("{} exited with {}: {}", program.display(), output.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
    Ok((wall_us, String::from_utf8_lossy(&output.stdout).into_owned()))
}

async fn ethereum_etl(rig: &Rig, range: &Range, venv: &Path, scratch: &Path) -> Result<Peer> {
    let python = venv.join("bin/python");
    ensure!(venv.join("bin/ethereumetl").exists(), "ethereumetl is missing from {}", venv.display());
    let url = rig.anvil.url();
    let csv = scratch.join("etl.csv");
    let mut args = vec!["-c".to_owned(), ETL_SCRIPT.to_owned()];
    args.extend(
        [
            "export_token_transfers".to_owned(),
            "-s".to_owned(),
            range.first.to_string(),
            "-e".to_owned(),
            range.last.to_string(),
            "-b".to_owned(),
            "100".to_owned(),
            "-w".to_owned(),
            "2".to_owned(),
            "-p".to_owned(),
            url.clone(),
            "-o".to_owned(),
            csv.display().to_string(),
        ],
    );
    let (wall_us, stdout) = timed(&python, &args).await?;
    let times = last_json_line(&stdout)?;
    let work_us = times["work_us"].as_u64().context("work_us")?.max(1);
    let found = read_etl_csv(&csv, &range.watched_addresses)?;
    println!(
        "   ethereum-etl: `ethereumetl export_token_transfers -s {} -e {} -b 100 -w 2 -p {url} -o <csv>` (its CLI, run from Python)",
        range.first, range.last
    );
    println!(
        "   ethereum-etl: export {} → {} blocks/s; whole process {} (start and imports {})",
        secs(work_us),
        n(rate(range.blocks(), work_us)),
        secs(wall_us),
        secs(times["import_us"].as_u64().unwrap_or(0))
    );
    let complete = found.check("ethereum-etl", range);
    Ok(Peer { wall_us, work_us, complete })
}

/// The last line of `stdout` that is a JSON object.
fn last_json_line(stdout: &str) -> Result<Value> {
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("the script printed no result")?;
    serde_json::from_str(line).with_context(|| format!("script output {line:?}"))
}

fn read_etl_csv(path: &Path, watched: &[Address]) -> Result<Found> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let column = |name: &str| header.iter().position(|h| h.trim() == name).with_context(|| format!("no {name} column"));
    let (to_col, block_col) = (column("to_address")?, column("block_number")?);
    let watched: HashSet<String> = watched.iter().map(|a| format!("{a:#x}")).collect();
    let mut found = Found::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let block: u64 = fields.get(block_col).context("short CSV row")?.trim().parse().context("block_number")?;
        let to = fields.get(to_col).context("short CSV row")?.trim().to_lowercase();
        found.rows += 1;
        found.min_block = Some(found.min_block.map_or(block, |b| b.min(block)));
        found.max_block = Some(found.max_block.map_or(block, |b| b.max(block)));
        if watched.contains(&to) {
            found.watched += 1;
        }
    }
    Ok(found)
}

async fn cryo(rig: &Rig, range: &Range, venv: &Path, scratch: &Path) -> Result<Peer> {
    let python = venv.join("bin/python");
    ensure!(python.exists(), "{} is missing", python.display());
    let url = rig.anvil.url();
    let watched_file = scratch.join("watched.txt");
    let listing: String = range.watched_addresses.iter().map(|a| format!("{a:#x}\n")).collect();
    std::fs::write(&watched_file, listing).context("cannot write the watched addresses")?;
    // cryo's ranges exclude their end ("6000:7000" is 1,000 blocks): A:B+1 covers A..=B.
    let blocks = format!("{}:{}", range.first, range.last + 1);
    let args = vec!["-c".to_owned(), CRYO_SCRIPT.to_owned(), blocks.clone(), url.clone(), watched_file.display().to_string()];
    let (wall_us, stdout) = timed(&python, &args).await?;
    let result = last_json_line(&stdout)?;
    let work_us = result["work_us"].as_u64().context("work_us")?.max(1);
    let found = Found {
        rows: result["rows"].as_u64().context("rows")?,
        min_block: result["min_block"].as_u64(),
        max_block: result["max_block"].as_u64(),
        watched: result["watched"].as_u64().context("watched")?,
    };
    println!("   cryo: `cryo.collect(\"erc20_transfers\", blocks=[\"{blocks}\"], rpc=\"{url}\")` (end excluded), from Python");
    println!(
        "   cryo: collect {} → {} blocks/s; whole process {} (start and imports {})",
        secs(work_us),
        n(rate(range.blocks(), work_us)),
        secs(wall_us),
        secs(result["import_us"].as_u64().unwrap_or(0))
    );
    let complete = found.check("cryo", range);
    Ok(Peer { wall_us, work_us, complete })
}

// ---------------------------------------------------------------------------------------------
// Step 4: where the catch-up time goes.

/// Where the catch-up's time went, from step 4: what bounds it against cryo, which reads logs only.
struct Spent {
    catch_up_us: u64,
    /// The same catch-up with nothing watched.
    bare_us: u64,
    /// Fetching every block with its transactions, alone.
    full_us: u64,
}

impl Spent {
    /// The summary's account of it, against `cryo` blocks/s.
    fn bound(&self, blocks: u64, cryo: u64) -> String {
        let bare = rate(blocks, self.bare_us);
        format!(
            "the watched payments' writes, {} % of the catch-up (with nothing watched {} blocks/s, {} cryo); fetching every block in full, which cryo does not, {} blocks/s alone",
            u128::from(self.catch_up_us.saturating_sub(self.bare_us)) * 100 / u128::from(self.catch_up_us.max(1)),
            n(bare),
            support::ratio(bare, cryo),
            n(rate(blocks, self.full_us))
        )
    }
}

async fn breakdown(rig: &Rig, range: &Range, catch_up_us: u64, database_url: &str) -> Result<Spent> {
    println!();
    println!("4. where payrail's catch-up time goes: the watcher's RPC patterns replayed alone over the range");
    let rpc = EvmClient::for_chain(&rig.spec)?;
    let heights = range.first..=range.last;
    let blocks = range.blocks();

    let started = Instant::now();
    let fetched: Vec<_> = stream::iter(heights.clone())
        .map(|h| rpc.block(h))
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
    let full_us = micros(started.elapsed());
    ensure!(u64::try_from(fetched.len()).unwrap_or(0) == blocks, "fetched {} blocks", fetched.len());
    drop(fetched);

    let started = Instant::now();
    let hashes: Vec<_> = stream::iter(heights.clone())
        .map(|h| rpc.block_hash(h))
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
    let hashes_us = micros(started.elapsed());
    ensure!(u64::try_from(hashes.len()).unwrap_or(0) == blocks, "fetched {} hashes", hashes.len());

    let started = Instant::now();
    let mut batched = 0u64;
    let mut start = range.first;
    while start <= range.last {
        let end = range.last.min(start + TICK_BLOCKS - 1);
        let calls: Vec<(&str, Value)> =
            (start..=end).map(|h| ("eth_getBlockByNumber", json!([format!("{h:#x}"), true]))).collect();
        let answers = rig.node.batch(&calls).await?;
        ensure!(answers.iter().all(|a| a.is_object()), "a batched block is missing");
        batched += u64::try_from(answers.len()).unwrap_or(0);
        start = end + 1;
    }
    let batch_us = micros(started.elapsed());
    ensure!(batched == blocks, "batched {batched} blocks");

    let started = Instant::now();
    let mut logs = 0u64;
    let mut start = range.first;
    while start <= range.last {
        let end = range.last.min(start + TICK_BLOCKS - 1);
        logs += u64::try_from(rpc.token_transfers(start, end, &[rig.usdc], Some(&range.watched_addresses)).await?.len()).unwrap_or(0);
        start = end + 1;
    }
    let logs_us = micros(started.elapsed());
    ensure!(logs == range.watched_transfers, "eth_getLogs found {logs} watched transfers");

    // The same catch-up with nothing to watch: a watcher on a second, empty database (no invoice,
    // no cursor) fetches and stores the blocks and moves its cursor, and that is all.
    let bare_database = format!("payrail_bench_idx_bare_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {bare_database}")).execute(&rig.state.pool).await?;
    let bare = bare_catch_up(rig, range, &support::url_with_database(database_url, &bare_database)?).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {bare_database} WITH (FORCE)")).execute(&rig.state.pool).await?;
    let bare_us = bare?;

    let line = |label: &str, us: u64| {
        println!(
            "   {label:<68} {:>8}  {:>7} blocks/s  {:>3}% of the catch-up",
            secs(us),
            n(rate(blocks, us)),
            u128::from(us) * 100 / u128::from(catch_up_us.max(1))
        );
    };
    line("the catch-up (step 2)", catch_up_us);
    line("the same catch-up with no address watched (blocks and cursor only)", bare_us);
    line("eth_getBlockByNumber, full transactions, 8 in flight (as now)", full_us);
    line("eth_getBlockByNumber, hashes only, 8 in flight", hashes_us);
    line("eth_getBlockByNumber, full, JSON-RPC batches of 100, 1 in flight", batch_us);
    line("eth_getLogs per 100 blocks, watched addresses (as now)", logs_us);
    let rest = catch_up_us.saturating_sub(full_us + logs_us);
    line("the catch-up less its block fetches and eth_getLogs (database, …)", rest);
    let payments_us = catch_up_us.saturating_sub(bare_us);
    println!(
        "   the {} payments cost {} of the catch-up (catch-up − bare catch-up): {} per payment",
        n(range.watched_transfers),
        secs(payments_us),
        support::ms(payments_us / range.watched_transfers.max(1))
    );
    Ok(Spent { catch_up_us, bare_us, full_us })
}

/// The catch-up over `range` by a watcher whose database (`url`, empty) watches nothing; its time.
async fn bare_catch_up(rig: &Rig, range: &Range, url: &str) -> Result<u64> {
    let pool = payrail::db::connect(url, 4).await?;
    payrail::db::migrate(&pool).await?;
    let mut spec = rig.spec.clone();
    spec.start_block = Some(range.first);
    let watcher = EvmWatcher::new(spec, pool.clone(), Arc::new(payrail::ledger::Ledger::new(pool.clone())), rig.state.rates.clone(), rig.state.clock.clone())?;
    let started = Instant::now();
    loop {
        match watcher.step().await? {
            step if step.is_idle() => break,
            ChainEvent::Committed { payments, .. } => ensure!(payments == 0, "payments seen with nothing watched"),
            ChainEvent::Reorged { .. } | ChainEvent::Reverted { .. } => bail!("unexpected reorg"),
        }
        ensure!(started.elapsed() < Duration::from_secs(600), "the bare catch-up did not finish");
    }
    let elapsed = micros(started.elapsed());
    pool.close().await;
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// Step 5: latency from a payment's block to the invoice update.

struct Latency {
    min: u64,
    median: u64,
    max: u64,
    poll_ms: u64,
}

async fn latency(rig: &Rig, pushed: bool) -> Result<Latency> {
    let payer = DEV_PAYER_KEY.parse::<PrivateKeySigner>().context("payer key")?.address();
    let mut spec = rig.spec.clone();
    spec.ws = if pushed { Some(RpcUrl::new(&rig.anvil.ws_url()).map_err(anyhow::Error::msg)?) } else { None };
    let watcher = rig.watcher(&spec)?;
    let poll_ms = rig.spec.block_time_ms.clamp(250, payrail::chain::evm::watcher::POLL_INTERVAL_MS_MAX);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut live = tokio::spawn(watcher.run(shutdown_rx));
    println!();
    println!(
        "5. latency from a payment's block to the invoice update (watcher running live, {}polling the tip every {poll_ms} ms; \
         invoice read every {} ms)",
        if pushed { "woken by new heads over WebSocket, " } else { "" },
        STATUS_POLL.as_millis()
    );
    // Let the live watcher take its lock and make its first (idle) tick.
    tokio::time::sleep(Duration::from_millis(poll_ms + 500)).await;
    let mut samples = Vec::new();
    for run in 0..LATENCY_RUNS {
        // Land the payments at different points of the polling interval.
        let pause = Duration::from_millis(run * poll_ms / LATENCY_RUNS);
        tokio::time::sleep(pause).await;
        if live.is_finished() {
            break;
        }
        let invoice = rig.invoice().await?;
        let to = deposit_of(&invoice)?;
        let due: U256 = invoice.payment_options[0].amount_minor.parse().context("amount")?;
        let data = TestToken::transferCall { to, amount: due }.abi_encode();
        let hash = rig.node.send(payer, rig.usdc, data, TRANSFER_GAS).await?;
        let receipt = rig.node.receipt(&hash).await?;
        let mined = Instant::now();
        let block = hex_u64(&receipt["blockNumber"])?;
        let status = loop {
            let status: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1")
                .bind(&invoice.id)
                .fetch_one(&rig.state.pool)
                .await?;
            if status != "open" || mined.elapsed() > LATENCY_DEADLINE || live.is_finished() {
                break status;
            }
            tokio::time::sleep(STATUS_POLL).await;
        };
        let us = micros(mined.elapsed());
        // `processing` is expected (the payment waits for its confirmations); a payment the
        // watcher counts as final at once would show as paid.
        ensure!(
            matches!(status.as_str(), "processing" | "paid"),
            "invoice {} is {status} {} after its payment's block {block}",
            invoice.id,
            support::ms(us)
        );
        println!("   payment {:>2}: paused {:>4} ms, block {block}, invoice {status} after {}", run + 1, pause.as_millis(), support::ms(us));
        samples.push(us);
    }
    let _ = shutdown_tx.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(15), &mut live).await;
    match stopped {
        Ok(joined) => joined.map_err(|e| anyhow!("the live watcher panicked: {e}"))??,
        Err(_) => {
            live.abort();
            bail!("the live watcher did not stop");
        }
    }
    ensure!(u64::try_from(samples.len()).unwrap_or(0) == LATENCY_RUNS, "the live watcher stopped early");
    samples.sort_unstable();
    let latency = Latency {
        min: samples.first().copied().unwrap_or(0),
        median: median(&samples).unwrap_or(0),
        max: samples.last().copied().unwrap_or(0),
        poll_ms,
    };
    println!("   min {}, median {}, max {}", support::ms(latency.min), support::ms(latency.median), support::ms(latency.max));
    Ok(latency)
}
