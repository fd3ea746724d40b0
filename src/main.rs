//! The `payrail` command line. Errors become `anyhow` here, at the edge, and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use payrail::config::{ChainKind, Config, LogFormat};
use payrail::secrets::{SecretsAtRest, SecretsKey};
use payrail::{app, db, devnet, merchant, payout};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Parser)]
#[command(
    name = "payrail",
    version,
    about = "A payment daemon: chain watchers, an exact double-entry ledger in PostgreSQL, invoices over HTTP.",
    long_about = "payrail watches Bitcoin and EVM chains for payments to per-invoice deposit addresses, \
                  credits a double-entry ledger in PostgreSQL exactly once, and lets merchants create \
                  and poll invoices over HTTP.\n\nQuick start: `payrail dev` runs the whole local stack \
                  and prints an API key and a curl line that creates an invoice."
)]
struct Cli {
    /// Configuration file; chain files are read from `chains.dir` relative to it. Default:
    /// `config.dev.toml` for the dev stack's commands (`dev`, `pay`, `regtest`), `config.toml`
    /// for everything else.
    #[arg(long, global = true, env = "PAYRAIL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: HTTP API and background jobs, against the configured database.
    Serve {
        /// Do not apply pending database migrations at start.
        #[arg(long)]
        no_migrate: bool,
        /// Start even with settings meant for the local dev stack only (webhooks to loopback,
        /// fixed or file rates, Bitcoin regtest, a Stripe API that is not https). Without it such
        /// a configuration is refused, naming each setting.
        #[arg(long)]
        allow_dev_settings: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run the local development stack: a database (DATABASE_URL, or an ephemeral cluster made
    /// here), a demo merchant with an API key, and the daemon on loopback.
    Dev {
        /// Address to serve on (overrides server.listen; port 0 picks a free one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Do not start the local chains (anvil per EVM chain); the API still runs.
        #[arg(long)]
        no_chains: bool,
        /// Do not start localstripe for card payments (it starts when Stripe is not configured and
        /// `scripts/localstripe` is at hand).
        #[arg(long)]
        no_card: bool,
    },
    /// Pay an invoice on the dev stack from the funded dev payer account, as a customer's wallet
    /// would: reads the invoice over the API and sends the quoted amount to its deposit address.
    Pay {
        /// The API's base URL, as `payrail dev` prints it.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
        /// The merchant's API key.
        #[arg(long, env = "PAYRAIL_API_KEY")]
        key: String,
        /// The invoice to pay (`inv_…`).
        #[arg(long)]
        invoice: String,
        /// The CAIP-19 asset to pay in (one of the invoice's payment options).
        #[arg(long)]
        asset: String,
        /// Pay this many smallest units instead of the quoted amount (to try under- and overpayment).
        #[arg(long)]
        amount_minor: Option<String>,
    },
    /// Run payrail's own Bitcoin regtest node (development only): a fresh regtest chain in memory,
    /// a funded wallet, and an Electrum protocol server with `regtest.*` control methods
    /// (mine, send, bump, replace, reorg, tip). A restart is a new chain.
    Regtest {
        /// Address of the Electrum server.
        #[arg(long, default_value = "127.0.0.1:50001")]
        listen: SocketAddr,
        /// Mine a block every N seconds (without it, blocks are mined on request only).
        #[arg(long)]
        mine_every_secs: Option<u64>,
    },
    /// Manage merchants.
    Merchants {
        #[command(subcommand)]
        command: MerchantsCommand,
    },
    /// Creator payouts through the PayoutBatcher contract.
    Payouts {
        #[command(subcommand)]
        command: PayoutsCommand,
    },
    /// Re-read a chain's block range and compare it with the ledger: deposits, payouts, sweeps.
    /// Exits with status 1 when anything does not match, so it can run from cron.
    Reconcile {
        /// The chain, by name or CAIP-2 id.
        #[arg(long, required_unless_present = "resume")]
        chain: Option<String>,
        /// First block of the range.
        #[arg(long, default_value_t = 0)]
        from_block: u64,
        /// Last block of the range (the chain's tip when absent).
        #[arg(long)]
        to_block: Option<u64>,
        /// Continue an interrupted run (`rec_…`) where it stopped.
        #[arg(long, conflicts_with = "chain")]
        resume: Option<String>,
        /// With `--chain stripe`: RFC 3339, charges created at or after.
        #[arg(long)]
        from_time: Option<chrono::DateTime<chrono::Utc>>,
        /// With `--chain stripe`: RFC 3339, charges created before (now when absent).
        #[arg(long)]
        to_time: Option<chrono::DateTime<chrono::Utc>>,
        /// `json` (the report) or `csv` (one row per item).
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// API keys: create platform keys (finance, admin); revoke any key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PayoutsCommand {
    /// Pay creators now: write a batch per chain and asset for every creator above the threshold,
    /// then, with the hot wallet key (PAYRAIL_HOT_WALLET_KEY or PAYRAIL_HOT_WALLET_KEY_FILE), send
    /// the open batches and wait until each is confirmed or failed.
    Run {
        /// Only this chain (name or CAIP-2 id).
        #[arg(long)]
        chain: Option<String>,
        /// Only this asset (CAIP-19).
        #[arg(long)]
        asset: Option<String>,
        /// Only write the batches; the daemon's payout executor sends them.
        #[arg(long)]
        no_send: bool,
        /// Stop waiting after this many seconds; open batches are then left to the daemon.
        #[arg(long, default_value_t = 900)]
        wait_s: u64,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a platform-wide API key and print it (shown only this once).
    Create {
        /// `finance` or `admin`.
        #[arg(long)]
        role: String,
    },
    /// Revoke a key (`key_…`, any role) at once: every replica refuses it from its next request.
    Revoke {
        /// The key id, `key_…` (the middle part of `pr_<id>_<secret>` with `key_` in front).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum MerchantsCommand {
    /// Create a merchant and print its id and a new API key (shown only this once).
    Create {
        /// The merchant's display name.
        #[arg(long)]
        name: String,
    },
}

/// `payrail reconcile`: a run (or the rest of one) with a progress bar on stderr; the report on
/// stdout. Returns whether everything matched.
async fn reconcile(
    config: &Config,
    chain: Option<String>,
    from_block: u64,
    to_block: Option<u64>,
    resume: Option<String>,
    format: &str,
) -> Result<bool> {
    anyhow::ensure!(format == "json" || format == "csv", "--format must be json or csv");
    let pool = db::connect(&config.database.url, 4)
        .await
        .with_context(|| format!("database {}", config.database.url_redacted()))?;
    let reconciler = payrail::reconcile::Reconciler::new(pool, config.chains().to_vec());
    let id = match (resume, chain) {
        (Some(id), _) => id,
        (None, Some(chain)) => reconciler.start(&chain, from_block, to_block).await?,
        (None, None) => anyhow::bail!("--chain or --resume is required"),
    };
    eprintln!("reconciliation {id} (resume with --resume {id})");
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} blocks {pos}/{len} [{bar:40}] {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = reconciler
        .complete(&id, &|p: payrail::reconcile::ScanProgress| {
            bar.set_length(p.to_block - p.from_block + 1);
            bar.set_position(p.scanned_to - p.from_block + 1);
        })
        .await?;
    bar.finish_and_clear();
    print_report(&report, format)?;
    Ok(report.ok)
}

/// `payrail reconcile --chain stripe`: the card processor's charges and refunds of a time range
/// against the ledger. Returns whether everything matched.
async fn reconcile_stripe(
    config: &Config,
    from_time: Option<chrono::DateTime<chrono::Utc>>,
    to_time: Option<chrono::DateTime<chrono::Utc>>,
    format: &str,
) -> Result<bool> {
    anyhow::ensure!(format == "json" || format == "csv", "--format must be json or csv");
    let from = from_time.context("--chain stripe needs --from-time (RFC 3339)")?;
    let to = to_time.unwrap_or_else(chrono::Utc::now);
    let card = app::card_rail(config).context("Stripe is not configured (PAYRAIL_STRIPE_SECRET_KEY)")?;
    let pool = db::connect(&config.database.url, 4)
        .await
        .with_context(|| format!("database {}", config.database.url_redacted()))?;
    let report = payrail::reconcile::stripe::reconcile_stripe(&pool, &card.client, from, to).await?;
    print_report(&report, format)?;
    Ok(report.ok)
}

fn print_report(report: &payrail::reconcile::Report, format: &str) -> Result<()> {
    if format == "csv" {
        print!("{}", payrail::reconcile::compare::items_csv(report));
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    eprintln!(
        "{}: {} item(s), {} difference(s); {}",
        report.run_id,
        report.items.len(),
        report.differences,
        if report.ok { "everything matches" } else { "NOT reconciled" }
    );
    Ok(())
}

/// `payrail payouts run`: one run, then (holding the executor lock) drives every open batch to a
/// final state. Exits non-zero when a batch failed or is still open at the deadline.
async fn payouts_run(config: &Config, chain: Option<String>, asset: Option<String>, no_send: bool, wait_s: u64) -> Result<()> {
    let pool = db::connect(&config.database.url, 4)
        .await
        .with_context(|| format!("database {}", config.database.url_redacted()))?;
    // This command writes no webhook secrets; the state only needs to say how they would be kept.
    let secrets = match SecretsKey::from_env()? {
        Some(key) => SecretsAtRest::Sealed(std::sync::Arc::new(key)),
        None => SecretsAtRest::Plaintext,
    };
    let state = app::state(config, pool.clone(), std::sync::Arc::new(payrail::clock::SystemClock), secrets);
    let service = state.payouts.clone().context("no enabled chain has a payout_batcher")?;
    let key = if no_send { None } else { app::hot_wallet_key_from_env().context("reading the hot wallet key")? };
    // One executor only: take its lock before writing, so this process may send what it writes.
    let mut lock = match &key {
        Some(_) => payout::try_lock_executor(&pool).await?,
        None => None,
    };
    let summary = service.run(&payout::RunRequest { chain, asset }).await?;
    println!("run {}: {} batch(es)", summary.run_id, summary.created.len());
    for batch in &summary.created {
        println!("  {} {} {} total {} to {} creator(s)", batch.id, batch.chain, batch.asset, batch.total_minor, batch.recipients);
    }
    for skipped in &summary.skipped {
        println!("  skipped {} {} {}: {:?}", skipped.creator_id, skipped.asset, skipped.amount_minor, skipped.reason);
    }
    let Some(key) = key else {
        println!("not sending (no hot wallet key, or --no-send): the daemon's payout executor sends open batches");
        return Ok(());
    };
    let Some(leadership) = lock.as_mut() else {
        println!("another payrail process is the payout executor: it sends these batches");
        return Ok(());
    };
    let mut senders = Vec::new();
    for chain in service.chains() {
        senders.push(payout::PayoutSender::new(
            chain.clone(),
            key.expose_secret(),
            pool.clone(),
            state.ledger.clone(),
            config.payouts.clone(),
            state.clock.clone(),
        )?);
    }
    let open: Vec<String> =
        sqlx::query_scalar("SELECT id FROM payout_batches WHERE status IN ('created', 'sent') ORDER BY created_at, id")
            .fetch_all(&pool)
            .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_s);
    let poll = std::time::Duration::from_millis(config.payouts.poll_interval_ms.min(1_000));
    payout::drive(&pool, leadership, &senders, &open, poll, deadline, |id, progress| println!("  {id}: {progress:?}")).await?;
    let mut failed = 0;
    for id in &open {
        let view = payout::store::view(&pool, id).await?;
        println!("{} {} {}", view.id, view.status, view.tx_hash.as_deref().unwrap_or("-"));
        failed += usize::from(view.status != "confirmed");
    }
    anyhow::ensure!(failed == 0, "{failed} payout batch(es) failed or are still open");
    Ok(())
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("cannot load configuration from {}", path.display()))
}

fn init_tracing(config: Option<&Config>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.map(|c| c.log.filter.clone()))
        .unwrap_or_else(|| "info".to_owned());
    let builder = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr);
    match config.map(|c| c.log.format) {
        Some(LogFormat::Json) => builder.json().init(),
        _ => builder.init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// The dev stack's card rail: localstripe on a free loopback port, with test secrets, started before
/// the configuration is read (the secrets come from the environment) and stopped with the process
/// (it exits when its standard input closes).
fn dev_localstripe() -> Result<Option<(std::process::Child, String)>> {
    let script = std::path::Path::new("scripts/localstripe");
    if std::env::var_os("PAYRAIL_STRIPE_SECRET_KEY").is_some() || !script.exists() {
        return Ok(None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let status = std::process::Command::new(script).arg("install").status()?;
    anyhow::ensure!(status.success(), "scripts/localstripe install failed");
    let child = std::process::Command::new(script)
        .args(["run", &port.to_string()])
        .env("PAYRAIL_LOCALSTRIPE_EXIT_ON_EOF", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(started.elapsed() < std::time::Duration::from_secs(30), "localstripe did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}");
    // Test secrets for a fake server; read by the configuration just below, in this one thread.
    std::env::set_var("PAYRAIL_STRIPE_SECRET_KEY", DEV_STRIPE_KEY);
    std::env::set_var("PAYRAIL_STRIPE_WEBHOOK_SECRET", DEV_STRIPE_WEBHOOK_SECRET);
    std::env::set_var("PAYRAIL_STRIPE__API_BASE", &url);
    Ok(Some((child, url)))
}

const DEV_STRIPE_KEY: &str = "sk_test_payrail_dev";
const DEV_STRIPE_WEBHOOK_SECRET: &str = "whsec_payrail_dev";

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Before the runtime's threads exist: the dev stack may set environment variables.
    let card = match &cli.command {
        Command::Dev { no_card: false, .. } => dev_localstripe()?,
        _ => None,
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli, card))
}

async fn run(cli: Cli, card: Option<(std::process::Child, String)>) -> Result<()> {
    let config_path = cli.config.clone().unwrap_or_else(|| {
        // The dev stack's own commands read its configuration; everything else production's.
        let dev_stack = matches!(cli.command, Command::Dev { .. } | Command::Pay { .. } | Command::Regtest { .. });
        PathBuf::from(if dev_stack { "config.dev.toml" } else { "config.toml" })
    });
    let config = load_config(&config_path)?;
    init_tracing(Some(&config));
    match cli.command {
        Command::Serve { no_migrate, allow_dev_settings } => {
            let dev_settings = config.dev_only_settings();
            if !dev_settings.is_empty() {
                let list = dev_settings.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n");
                if !allow_dev_settings {
                    anyhow::bail!(
                        "{} has settings meant for the local dev stack only:\n{list}\n\
                         change them, or pass --allow-dev-settings to run with them anyway",
                        config_path.display()
                    );
                }
                tracing::warn!(target: "config", settings = %list.trim(), "running with dev-only settings (--allow-dev-settings)");
            }
            let pool = db::connect(&config.database.url, config.database.pool_max)
                .await
                .with_context(|| format!("database {}", config.database.url_redacted()))?;
            if !no_migrate {
                db::migrate(&pool).await?;
            }
            let key = SecretsKey::from_env()?;
            let secrets = app::webhook_secrets(&pool, key, config.webhooks.allow_plaintext_secrets).await?;
            let listener = app::bind(config.server.listen).await?;
            let hot_wallet_key = app::hot_wallet_key_from_env().context("reading the hot wallet key")?;
            let jobs = app::Jobs { hot_wallet_key, watch_chains: true };
            app::serve(&config, pool, listener, jobs, secrets, shutdown_signal()).await?;
        }
        Command::Migrate => {
            db::ensure_database(&config.database.url).await?;
            let pool = db::connect(&config.database.url, 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied to {}", config.database.url_redacted());
        }
        Command::Reconcile { chain, from_block, to_block, resume, from_time, to_time, format } => {
            let ok = if chain.as_deref() == Some("stripe") {
                reconcile_stripe(&config, from_time, to_time, &format).await?
            } else {
                reconcile(&config, chain, from_block, to_block, resume, &format).await?
            };
            if !ok {
                std::process::exit(1);
            }
        }
        Command::Payouts { command: PayoutsCommand::Run { chain, asset, no_send, wait_s } } => {
            payouts_run(&config, chain, asset, no_send, wait_s).await?;
        }
        Command::Keys { command: KeysCommand::Create { role } } => {
            let role = merchant::Role::parse(&role).context("role must be finance or admin")?;
            let pool = db::connect(&config.database.url, 2).await?;
            let key = merchant::create_platform_key(&pool, role).await?;
            println!("api_key: {key}");
            println!("(the API key is shown only this once; store it now)");
        }
        Command::Keys { command: KeysCommand::Revoke { id } } => {
            let pool = db::connect(&config.database.url, 2).await?;
            if !merchant::keys::revoke_any(&pool, &id, chrono::Utc::now()).await? {
                anyhow::bail!("no API key {id}");
            }
            println!("revoked: {id}");
        }
        Command::Merchants { command: MerchantsCommand::Create { name } } => {
            let pool = db::connect(&config.database.url, 2).await?;
            let created = merchant::create_merchant(&pool, &name).await?;
            println!("merchant_id: {}", created.merchant_id);
            println!("api_key:     {}", created.api_key);
            println!("(the API key is shown only this once; store it now)");
        }
        Command::Dev { listen, no_chains, .. } => dev(config, listen, no_chains, card).await?,
        Command::Regtest { listen, mine_every_secs } => regtest(listen, mine_every_secs).await?,
        Command::Pay { api, key, invoice, asset, amount_minor } => {
            let client = alloy::transports::http::reqwest::Client::new();
            let view: serde_json::Value = client
                .get(format!("{}/v1/invoices/{invoice}", api.trim_end_matches('/')))
                .bearer_auth(&key)
                .send()
                .await
                .context("reading the invoice")?
                .error_for_status()
                .context("reading the invoice")?
                .json()
                .await?;
            let option = view["payment_options"]
                .as_array()
                .and_then(|options| options.iter().find(|o| o["asset"] == asset.as_str()))
                .with_context(|| format!("{invoice} has no payment option in {asset}"))?;
            if asset.starts_with("bip122:") {
                let to = option["address"].as_str().context("that option has no deposit address (set a descriptor: PUT /v1/merchants/me/bitcoin)")?;
                let sats: u64 = amount_minor.as_deref().or(option["amount_minor"].as_str()).context("no amount")?.parse()?;
                let txid = devnet::pay::pay_bitcoin(&config, &asset.parse()?, to, sats).await?;
                println!("sent {sats} sat of {asset} to {to} in {txid}");
                return Ok(());
            }
            let to: alloy::primitives::Address = option["address"]
                .as_str()
                .context("that option has no deposit address")?
                .parse()?;
            let amount: alloy::primitives::U256 =
                amount_minor.as_deref().or(option["amount_minor"].as_str()).context("no amount")?.parse()?;
            let hash = devnet::pay::pay(&config, &asset.parse()?, to, amount).await?;
            println!("sent {amount} of {asset} to {to} in {hash}");
        }
    }
    Ok(())
}

/// `payrail regtest`: the regtest node and its Electrum server until Ctrl-C.
async fn regtest(listen: SocketAddr, mine_every_secs: Option<u64>) -> Result<()> {
    let mine_interval = mine_every_secs.filter(|s| *s > 0).map(std::time::Duration::from_secs);
    let node = devnet::regtest::RegtestNode::start(devnet::regtest::RegtestConfig { listen, mine_interval })
        .await
        .context("starting the regtest node")?;
    let (height, hash) = node.tip().await;
    let (p2wpkh, p2tr) = node.node().wallet_addresses().await;
    println!("payrail regtest node is up (development only: a new chain at every start)");
    println!("  electrum:  {}", node.electrum_url());
    println!("  chain:     {} (tip {height} {hash})", devnet::regtest::REGTEST_CAIP2);
    println!("  wallet:    {p2wpkh} {p2tr}");
    println!("  control:   regtest.mine, regtest.send, regtest.bump, regtest.replace, regtest.reorg, regtest.tip");
    println!("Ctrl-C stops it.");
    shutdown_signal().await;
    node.shutdown().await;
    Ok(())
}

/// The dev stack's Bitcoin chain: payrail's regtest node on the address of the bitcoin chain's
/// `rpc` (`tcp://127.0.0.1:<port>`), mining a block every 10 s.
async fn dev_bitcoin(config: &Config) -> Result<Option<devnet::regtest::RegtestHandle>> {
    let Some(chain) = config.chains().iter().find(|c| c.kind == ChainKind::Bitcoin) else {
        return Ok(None);
    };
    let url = chain.rpc.first().map(|u| u.as_str().to_owned()).unwrap_or_default();
    let listen = devnet::regtest::socket_addr_from_url(&url)
        .with_context(|| format!("{}: the dev stack runs its regtest node on tcp://127.0.0.1:<port>, not {url}", chain.name))?;
    let mine_interval = Some(std::time::Duration::from_secs(DEV_BITCOIN_BLOCK_INTERVAL_S));
    let node = devnet::regtest::RegtestNode::start(devnet::regtest::RegtestConfig { listen, mine_interval })
        .await
        .with_context(|| format!("starting the regtest node for {}", chain.name))?;
    println!("  {:<10} {} (regtest, a block every {DEV_BITCOIN_BLOCK_INTERVAL_S} s)", chain.name, node.electrum_url());
    Ok(Some(node))
}

/// How often the dev stack's regtest node mines.
const DEV_BITCOIN_BLOCK_INTERVAL_S: u64 = 10;

/// Starts one anvil per enabled EVM chain of the configuration, on the port its `rpc` names, and
/// deploys the dev contracts; the configuration's contract addresses must be the ones deployed.
async fn dev_chains(config: &Config) -> Result<Vec<devnet::anvil::Anvil>> {
    let mut chains = Vec::new();
    for chain in config.chains() {
        if chain.kind != ChainKind::Evm || chain.forwarder_factory.is_none() {
            continue;
        }
        let url = chain.rpc.first().map(|u| u.as_str().to_owned()).unwrap_or_default();
        let port: u16 = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| format!("{}: the dev stack runs anvil on http://127.0.0.1:<port>, not {url}", chain.name))?;
        let chain_id = chain.caip2.evm_chain_id().unwrap_or_default();
        let anvil = devnet::anvil::Anvil::start(chain_id, port, None)
            .await
            .with_context(|| format!("starting anvil for {}", chain.name))?;
        let deployed = devnet::anvil::deploy_dev_contracts_with(&anvil.url(), devnet::anvil::DevTokenDecimals::of(chain))
            .await
            .with_context(|| format!("deploying contracts on {}", chain.name))?;
        if Some(deployed.forwarder_factory) != chain.forwarder_factory {
            anyhow::bail!(
                "{}: the forwarder factory was deployed at {}, the configuration says {:?}",
                chain.name,
                deployed.forwarder_factory,
                chain.forwarder_factory
            );
        }
        devnet::anvil::fund_dev_batcher(&anvil.url(), &deployed, devnet::anvil::DevTokenDecimals::of(chain))
            .await
            .with_context(|| format!("funding the payout batcher on {}", chain.name))?;
        anvil.set_interval_mining(1).await?;
        chains.push((chain.name.clone(), anvil));
    }
    for (name, anvil) in &chains {
        println!("  {name:<10} {} (chain id {})", anvil.url(), anvil.chain_id());
    }
    Ok(chains.into_iter().map(|(_, anvil)| anvil).collect())
}

async fn dev(
    config: Config,
    listen: Option<SocketAddr>,
    no_chains: bool,
    card: Option<(std::process::Child, String)>,
) -> Result<()> {
    // DATABASE_URL wins; without it the stack brings its own throw-away cluster.
    let (url, mut cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let cluster = tokio::task::spawn_blocking(devnet::EphemeralPostgres::start)
                .await
                .context("starting PostgreSQL")??;
            (cluster.url("payrail"), Some(cluster))
        }
    };
    let result = async {
        println!("payrail dev stack is starting");
        let _chains = if no_chains { Vec::new() } else { dev_chains(&config).await? };
        let _bitcoin = if no_chains { None } else { dev_bitcoin(&config).await? };
        db::ensure_database(&url).await?;
        let pool = db::connect(&url, config.database.pool_max).await?;
        db::migrate(&pool).await?;
        // The dev stack seals webhook secrets when a key is configured and keeps them in plaintext
        // otherwise: a key made up here would not open them on the next run against the same database.
        let secrets = app::webhook_secrets(&pool, SecretsKey::from_env()?, true).await?;
        let demo = merchant::create_merchant(&pool, "Demo merchant").await?;
        let finance_key = merchant::create_platform_key(&pool, merchant::Role::Finance).await?;
        // The demo merchant takes BTC on regtest with a watch-only descriptor of a public dev seed.
        if let Some(chain) = config.chains().iter().find(|c| c.kind == ChainKind::Bitcoin && !no_chains) {
            if let Some(network) = payrail::chain::bitcoin::network_of(&chain.caip2).filter(|n| *n != bitcoin::Network::Bitcoin) {
                let descriptor = devnet::merchant::dev_bitcoin_descriptor(network)?;
                payrail::chain::bitcoin::set_descriptor(
                    &pool,
                    &demo.merchant_id,
                    &chain.caip2,
                    &payrail::chain::bitcoin::SetDescriptor { descriptor, gap_limit: None },
                )
                .await?;
            }
        }
        let listener = app::bind(listen.unwrap_or(config.server.listen)).await?;
        let base = format!("http://{}", listener.local_addr()?);
        if let Some((_, localstripe)) = &card {
            // localstripe delivers its signed events to the daemon, like Stripe would.
            reqwest::Client::new()
                .post(format!("{localstripe}/_config/webhooks/payrail"))
                .form(&[("url", format!("{base}/v1/stripe/webhook")), ("secret", DEV_STRIPE_WEBHOOK_SECRET.to_owned())])
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .context("registering the dev webhook at localstripe")?;
            println!("  card:      localstripe at {localstripe} (test cards on the checkout page)");
        }
        let database = if cluster.is_some() { format!("{url} (ephemeral, removed on exit)") } else { url.clone() };
        println!("payrail dev stack is up");
        println!("  database:  {database}");
        println!("  api:       {base}");
        println!("  merchant:  {}", demo.merchant_id);
        println!("  api key:   {}", demo.api_key);
        println!("  finance:   {finance_key} (runs payouts: POST {base}/v1/payouts/run)");
        println!();
        println!("Create an invoice:");
        println!(
            "  curl -s -X POST {base}/v1/invoices -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' -d '{{\"amount\":\"25.00\",\"currency\":\"USD\"}}'",
            demo.api_key
        );
        println!("Read it back:");
        println!("  curl -s {base}/v1/invoices/<id> -H 'Authorization: Bearer {}'", demo.api_key);
        println!();
        println!("Ctrl-C stops the stack.");
        // The dev chains' deployer operates the factory: it pays the sweeps' gas.
        let hot_wallet_key = (!no_chains).then(|| SecretString::from(devnet::anvil::DEV_DEPLOYER_KEY));
        let jobs = app::Jobs { hot_wallet_key, watch_chains: !no_chains };
        app::serve(&config, pool, listener, jobs, secrets, shutdown_signal()).await?;
        anyhow::Ok(())
    }
    .await;
    if let Some(cluster) = cluster.as_mut() {
        cluster.stop().context("stopping PostgreSQL")?;
    }
    result
}
