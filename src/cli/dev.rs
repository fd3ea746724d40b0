//! `payrail dev`: the whole local stack in one command — a database (DATABASE_URL, or an
//! ephemeral cluster made here), one anvil per EVM chain with the contracts deployed, payrail's
//! regtest node, localstripe for cards, a demo merchant with an API key, and the daemon on loopback.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use payrail::config::{ChainKind, Config};
use payrail::secrets::SecretsKey;
use payrail::{app, db, merchant};
use payrail_devnet as devnet;
use secrecy::SecretString;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve on (overrides server.listen; port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Do not start the local chains (anvil per EVM chain); the API still runs.
    #[arg(long)]
    no_chains: bool,
    /// Do not start localstripe for card payments (it starts when Stripe is not configured and
    /// `scripts/localstripe` is at hand).
    #[arg(long)]
    pub no_card: bool,
}

/// localstripe's process (it exits when its standard input closes) and its base URL.
pub type Localstripe = (std::process::Child, String);

/// The dev stack's card rail: localstripe on a free loopback port, with test secrets, started before
/// the configuration is read (the secrets come from the environment) and stopped with the process
/// (it exits when its standard input closes).
pub fn start_localstripe() -> Result<Option<Localstripe>> {
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

pub async fn run(config: Config, args: Args, card: Option<Localstripe>) -> Result<()> {
    let Args { listen, no_chains, .. } = args;
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
        let pool_creator = seed_subscription_split(&pool, &demo.merchant_id).await?;
        // The demo merchant takes BTC on regtest with a watch-only descriptor of a public dev seed.
        if let Some(chain) = config.chains().iter().find(|c| c.kind == ChainKind::Bitcoin && !no_chains) {
            if let Some(network) = payrail::chain::bitcoin::network_of(&chain.caip2).filter(|n| *n != bitcoin::Network::Bitcoin) {
                let descriptor = devnet::merchant::dev_bitcoin_descriptor(network)?;
                payrail::merchant::bitcoin::set_descriptor(
                    &pool,
                    &demo.merchant_id,
                    &chain.caip2,
                    &payrail::merchant::bitcoin::SetDescriptor { descriptor, gap_limit: None },
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
        println!("  creators:  {pool_creator} (the creator pool: 65% of subscription revenue)");
        println!("  console:   {base}/console (sign in with either key)");
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
        app::serve(&config, pool, listener, jobs, secrets, super::signal::shutdown()).await?;
        anyhow::Ok(())
    }
    .await;
    if let Some(cluster) = cluster.as_mut() {
        cluster.stop().context("stopping PostgreSQL")?;
    }
    result
}

/// Share of subscription revenue the demo merchant's creator pool gets, in basis points; the rest is
/// the merchant's.
pub const CREATOR_POOL_BPS: u32 = 6_500;

/// The demo merchant's creator pool and its split rule for subscriptions (`subscriptions/`): 65%
/// of each period paid to the pool, 35% kept. Returns the pool's creator id.
async fn seed_subscription_split(pool: &sqlx::PgPool, merchant_id: &str) -> anyhow::Result<String> {
    use payrail::creator::{create_creator, set_split_rules, CreateCreator, PrefixRule, SplitRules};
    use payrail::invoice::CreatorShare;
    let creator = create_creator(pool, merchant_id, &CreateCreator { name: "Creator pool".to_owned(), payout_addresses: Default::default() }).await?.creator.id;
    let rules = SplitRules {
        default: None,
        prefixes: vec![PrefixRule {
            order_id_prefix: payrail::billing::order_id(""),
            splits: vec![CreatorShare { creator: creator.clone(), bps: CREATOR_POOL_BPS }],
            platform_fee_bps: 0,
        }],
    };
    set_split_rules(pool, merchant_id, &rules).await?;
    Ok(creator)
}
