//! The `payrail` command line: one file per command. Each command's flags live beside the code
//! that runs it; this file only parses, loads the configuration and dispatches.

mod dev;
mod keys;
mod log;
mod merchants;
mod migrate;
mod pay;
mod payouts;
mod reconcile;
mod regtest;
mod serve;
mod signal;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use payrail::config::Config;

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
pub struct Cli {
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
    Serve(serve::Args),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run the local development stack: a database (DATABASE_URL, or an ephemeral cluster made
    /// here), a demo merchant with an API key, and the daemon on loopback.
    Dev(dev::Args),
    /// Pay an invoice on the dev stack from the funded dev payer account, as a customer's wallet
    /// would: reads the invoice over the API and sends the quoted amount to its deposit address.
    Pay(pay::Args),
    /// Run payrail's own Bitcoin regtest node (development only): a fresh regtest chain in memory,
    /// a funded wallet, and an Electrum protocol server with `regtest.*` control methods
    /// (mine, send, bump, replace, reorg, tip). A restart is a new chain.
    Regtest(regtest::Args),
    /// Manage merchants.
    Merchants {
        #[command(subcommand)]
        command: merchants::Command,
    },
    /// Creator payouts through the PayoutBatcher contract.
    Payouts {
        #[command(subcommand)]
        command: payouts::Command,
    },
    /// Re-read a chain's block range and compare it with the ledger: deposits, payouts, sweeps.
    /// Exits with status 1 when anything does not match, so it can run from cron.
    Reconcile(reconcile::Args),
    /// API keys: create platform keys (finance, admin); revoke any key.
    Keys {
        #[command(subcommand)]
        command: keys::Command,
    },
}

/// Parses the command line and runs the command on a multi-threaded runtime.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    // Before the runtime's threads exist: the dev stack may set environment variables.
    let card = match &cli.command {
        Command::Dev(args) if !args.no_card => dev::start_localstripe()?,
        _ => None,
    };
    // Named, so that `top -H` and profilers tell the daemon's threads from its neighbours'.
    tokio::runtime::Builder::new_multi_thread().thread_name("payrail-worker").enable_all().build()?.block_on(run(cli, card))
}

async fn run(cli: Cli, card: Option<dev::Localstripe>) -> Result<()> {
    let config_path = cli.config.clone().unwrap_or_else(|| {
        // The dev stack's own commands read its configuration; everything else production's.
        let dev_stack = matches!(cli.command, Command::Dev(_) | Command::Pay(_) | Command::Regtest(_));
        PathBuf::from(if dev_stack { "config.dev.toml" } else { "config.toml" })
    });
    let config = load_config(&config_path)?;
    log::init(&config);
    match cli.command {
        Command::Serve(args) => serve::run(&config, &config_path, args).await,
        Command::Migrate => migrate::run(&config).await,
        Command::Reconcile(args) => reconcile::run(&config, args).await,
        Command::Payouts { command } => payouts::run(&config, command).await,
        Command::Keys { command } => keys::run(&config, command).await,
        Command::Merchants { command } => merchants::run(&config, command).await,
        Command::Dev(args) => dev::run(config, args, card).await,
        Command::Regtest(args) => regtest::run(args).await,
        Command::Pay(args) => pay::run(&config, args).await,
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("cannot load configuration from {}", path.display()))
}

/// A connection pool for a one-shot command, with the database named (without its password) in
/// the error.
async fn connect(config: &Config, pool_max: u32) -> Result<sqlx::PgPool> {
    payrail::db::connect(&config.database.url, pool_max)
        .await
        .with_context(|| format!("database {}", config.database.url_redacted()))
}
